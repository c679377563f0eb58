package vmfs

import "fmt"

// resFile is a resource (system) file: .fdc.sf, .sbc.sf, .pbc.sf, .pb2.sf,
// .fbb.sf (§6).
type resFile struct {
	name string
	ino  *inode
	h    resHeader
	hdr  int64 // cluster header size H
}

// System file FD resources (cluster 0 of .fdc.sf, §6).
const (
	resFBB = 1
	resFDC = 2
	resPBC = 3
	resSBC = 4
	resVH  = 5
	resPB2 = 6
	resSDD = 7
	resJBC = 8
)

// openResFile reads the header of the system file ino and checks it.
func (v *Volume) openResFile(name string, ino *inode, minRes int64) (*resFile, error) {
	if ino.fd.typ != typeSysFile {
		return nil, ino.errorf(ErrCorrupt, "file descriptor", -1, "%s has type %d, want a system file (5)", name, ino.fd.typ)
	}
	b := make([]byte, resHeaderLen)
	if ino.size() < resHeaderLen {
		return nil, ino.errorf(ErrCorrupt, "resource header", -1, "%s is %d bytes long", name, ino.size())
	}
	if err := ino.fill(b, 0, 1, true); err != nil {
		return nil, err
	}
	h, _ := parseResHeader(b)
	rf := &resFile{name: name, ino: ino, h: h, hdr: v.clusterHdr}
	if err := rf.check(minRes); err != nil {
		return nil, err
	}
	return rf, nil
}

func (rf *resFile) check(minRes int64) error {
	h := rf.h
	bad := func(field, format string, args ...any) error {
		e := fieldErr(ErrCorrupt, rf.name+" resource header", field, -1, format, args...)
		e.Path, e.FD = rf.name, rf.ino.addr
		return e
	}
	switch {
	case h.rpc > 1<<16:
		return bad("resourcesPerCluster", "%d", h.rpc)
	case h.cpg == 0 || h.cpg > 1<<16:
		return bad("clustersPerGroup", "%d", h.cpg)
	case h.rpc > 0 && int64(h.resSize) < minRes:
		return bad("resourceSize", "%d bytes, need at least %d", h.resSize, minRes)
	}
	return nil
}

// offset returns the offset in the resource file of resource res of
// cluster cluster (§6.1):
//
//	g = c / cpg ; k = c % cpg
//	off = clusterGroupOffset + g·clusterGroupSize + cpg·H + k·rpc·resourceSize + r·resourceSize
func (rf *resFile) offset(cluster, res uint64) (int64, error) {
	h := rf.h
	what := fmt.Sprintf("%s resource (cluster %d, resource %d)", rf.name, cluster, res)
	if h.rpc == 0 || h.resSize == 0 {
		return 0, corruptf(what, -1, "%s holds no resources", rf.name)
	}
	if res >= uint64(h.rpc) {
		return 0, corruptf(what, -1, "resource out of range: %d per cluster", h.rpc)
	}
	size := rf.ino.size()
	g, k := cluster/uint64(h.cpg), cluster%uint64(h.cpg)
	if g > uint64(size) {
		return 0, corruptf(what, -1, "cluster out of range of the %d-byte file", size)
	}
	rs := int64(h.resSize)
	a, ok1 := mulOK(int64(g), int64(h.cgSize))
	b, ok2 := mulOK(int64(h.cpg), rf.hdr)
	c, ok3 := mulOK(int64(k)*int64(h.rpc)+int64(res), rs)
	ok1, ok3 = ok1 && a <= size, ok3 && c <= size
	off := int64(h.cgOffset) + a + b + c
	if !ok1 || !ok2 || !ok3 || off < 0 || off > size-rs {
		return 0, corruptf(what, -1, "cluster out of range of the %d-byte file", size)
	}
	return off, nil
}
