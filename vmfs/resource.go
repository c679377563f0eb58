package vmfs

import (
	"errors"
	"fmt"
	"strings"
)

// resFile is a resource (system) file: .fdc.sf, .sbc.sf, .pbc.sf, .pb2.sf,
// .fbb.sf (§6).
type resFile struct {
	name string
	ino  *inode
	h    resHeader
	hdr  int64 // cluster header size H
	// child is the header at h.childMetaOffset (VMFS6 .fbb.sf: the SFB
	// header nested in the LFB one), nil if none.
	child *resHeader
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

// resKind indexes the resource files a Volume opens (Volume.res).
type resKind int

const (
	kFBB resKind = iota // .fbb.sf (VMFS6: LFB header, SFB child)
	kFDC                // .fdc.sf
	kSBC                // .sbc.sf
	kPBC                // .pbc.sf
	kPB2                // .pb2.sf (VMFS5+)
	numRes
)

// resNames and resFDRes give each kind's name and FD resource (cluster 0).
var (
	resNames = [numRes]string{".fbb.sf", ".fdc.sf", ".sbc.sf", ".pbc.sf", ".pb2.sf"}
	resFDRes = [numRes]uint64{resFBB, resFDC, resSBC, resPBC, resPB2}
)

// Slot states of a resource file.
const (
	slotUnopened = iota
	slotOpening  // being opened: a request for it now is a loop
	slotDone     // rf (or err, or neither: the volume has no such file)
)

// resSlot is the lazily opened state of one resource file. Resource files
// are opened on first need, so each opens its dependencies first, whatever
// they are (.sbc.sf mapped through .pb2.sf, .fdc.sf through pointer blocks
// in .pbc.sf or .sbc.sf, …); a file needed while it is being opened is a
// loop. Volume.mount resolves every slot before the Volume is shared, so
// after mount the slots are read-only and safe for concurrent use.
type resSlot struct {
	state int8
	rf    *resFile
	err   error // why rf is nil; nil with rf nil: the volume has no such file
}

// resource returns resource file k, opening it (and what it depends on)
// on first use. An error reports why the volume has no usable file of that
// kind; its message names the file.
func (v *Volume) resource(k resKind) (*resFile, error) {
	s := &v.rfs[k]
	switch s.state {
	case slotDone:
		return s.rf, cloneErr(s.err)
	case slotOpening:
		chain := append(append([]string(nil), v.opening...), resNames[k])
		return nil, &Error{What: resNames[k], Vol: -1, DevOff: -1, Err: ErrCorrupt,
			Msg: "a loop among resource files: " + strings.Join(chain, " → ")}
	}
	s.state = slotOpening
	v.opening = append(v.opening, resNames[k])
	rf, err := v.openRes(k)
	v.opening = v.opening[:len(v.opening)-1]
	s.rf, s.err, s.state = rf, err, slotDone
	if rf == nil && err == nil && k == kFDC {
		s.err = corruptf(".fdc.sf", -1, "missing")
	}
	return rf, cloneErr(s.err)
}

// needRes returns the resource file that holds address a (what the caller
// resolves, for the message), or an error naming why there is none.
func (v *Volume) needRes(ino *inode, k resKind, what string) (*resFile, error) {
	if v.rfs[k].state == slotOpening {
		chain := append(append([]string(nil), v.opening...), resNames[k])
		return nil, ino.errorf(ErrCorrupt, what, -1, "lives in %s, which is being opened: a loop among resource files: %s",
			resNames[k], strings.Join(chain, " → "))
	}
	rf, err := v.resource(k)
	if rf != nil {
		return rf, nil
	}
	if err == nil {
		return nil, ino.errorf(ErrCorrupt, what, -1, "the volume has no %s", resNames[k])
	}
	var inner *Error
	sentinel := ErrCorrupt
	if errors.As(err, &inner) && inner.Err != nil {
		sentinel = inner.Err
	}
	return nil, ino.errorf(sentinel, what, -1, "the volume has no usable %s (%s)", resNames[k], strings.TrimPrefix(err.Error(), "vmfs: "))
}

// cloneErr returns a copy of a stored *Error, so that callers which
// annotate it (withFile, annotate) do not share it.
func cloneErr(err error) error {
	if e, ok := err.(*Error); ok {
		c := *e
		return &c
	}
	return err
}

// openRes opens resource file k from its system FD.
func (v *Volume) openRes(k resKind) (*resFile, error) {
	name := resNames[k]
	addr := fdAddr(0, resFDRes[k])
	var fd *fdesc
	var err error
	switch k {
	case kPB2:
		if v.ver < 5 {
			return nil, nil
		}
		if fd, addr, err = v.pb2FD(); fd == nil || err != nil {
			return nil, err
		}
	default:
		if fd, err = v.sysFD(addr, name); err != nil {
			return nil, err
		}
	}
	if fd.addr != addr || fd.typ != typeSysFile {
		return nil, &Error{Path: name, FD: addr, What: "file descriptor", Vol: -1, DevOff: -1, Err: ErrCorrupt,
			Msg: fmt.Sprintf("descAddr 0x%08x type %d, want 0x%08x type 5 (a system file)", fd.addr, fd.typ, addr)}
	}
	ino, err := v.newInode(fd, addr, name)
	if err != nil {
		return nil, err
	}
	minRes := int64(0)
	switch k {
	case kSBC:
		minRes = 512
	case kPBC, kPB2:
		minRes = v.ppb * int64(v.lay.ptrBytes)
	case kFDC:
		minRes = int64(v.lay.size)
	}
	rf, err := v.openResFile(name, ino, minRes)
	if err != nil {
		return nil, err
	}
	switch k {
	case kFDC:
		if rf.h.rpc == 0 {
			return nil, fieldErr(ErrCorrupt, ".fdc.sf resource header", "resourcesPerCluster", -1, "0")
		}
	case kFBB:
		if err := v.openFBBChild(rf); err != nil {
			return nil, err
		}
	}
	return rf, nil
}

// openFBBChild reads the VMFS6 SFB header nested at childMetaOffset of
// .fbb.sf (§6.1) and takes the SFB geometry from it.
func (v *Volume) openFBBChild(rf *resFile) error {
	if v.ver < 6 || rf.h.childMetaOffset == 0 {
		return nil
	}
	off := int64(rf.h.childMetaOffset)
	if off > rf.ino.size()-resHeaderLen {
		return fieldErr(ErrCorrupt, ".fbb.sf resource header", "childMetaOffset", -1, "0x%x past the end of the %d-byte file", off, rf.ino.size())
	}
	b := make([]byte, resHeaderLen)
	if err := rf.ino.fill(b, off, 1, true); err != nil {
		return err
	}
	h, _ := parseResHeader(b)
	rf.child = &h
	if h.rpc > 0 && h.rpc <= 8192 && h.resSize == 0 {
		v.sfbRPC = uint64(h.rpc)
	}
	return nil
}

// sysFDLoc returns the logical offset of system FD r of cluster 0 computed
// from the FS descriptor alone (§6.2): where ESXi puts it, in the first
// block of .fdc.sf at FDC start.
func (v *Volume) sysFDLoc(r uint64) int64 {
	f := v.fs
	return v.fdcStart + int64(f.fdcClusterGroupOff) + int64(f.fdcClustersPerGroup)*v.clusterHdr + int64(r)*int64(v.lay.size)
}

// sysFD loads a system FD: through .fdc.sf once it is open, else (while
// the resource files bootstrap) from its computed location (§6.2).
func (v *Volume) sysFD(addr uint32, name string) (*fdesc, error) {
	if v.fdc != nil {
		return v.loadFD(addr, name)
	}
	_, r := fdClusterRes(addr)
	return v.fdAtLoc(v.sysFDLoc(r), addr, name)
}

// fdAtLoc reads the FD at logical offset loc, which should be addr.
func (v *Volume) fdAtLoc(loc int64, addr uint32, name string) (*fdesc, error) {
	what := fmt.Sprintf("%s file descriptor 0x%08x", name, addr)
	if loc < 0 || loc > v.lv.size-int64(v.lay.size) {
		return nil, corruptf(what, loc, "outside the %d-byte volume", v.lv.size)
	}
	b := make([]byte, v.lay.size)
	if err := v.lv.readAt(b, loc, what); err != nil {
		return nil, err
	}
	fd, err := parseFD(b, v.lay)
	if err != nil {
		return nil, err
	}
	if fd.addr != addr {
		return nil, &Error{Path: name, FD: addr, What: what, Field: "descAddr", Vol: loc, DevOff: -1, Err: ErrCorrupt,
			Msg: fmt.Sprintf("0x%08x, want 0x%08x", fd.addr, addr)}
	}
	return fd, nil
}

// pb2FD returns the .pb2.sf FD: at pb2VolAddr with address pb2FDAddr when
// the FS descriptor gives them (dissect reads it there), else FD 0x01800004
// when that is a system file. A volume without one has no .pb2.sf.
func (v *Volume) pb2FD() (*fdesc, uint32, error) {
	addr := fdAddr(0, resPB2)
	if v.fs.pb2FDAddr != 0 {
		addr = v.fs.pb2FDAddr
	}
	if addr&7 != akFD {
		return nil, addr, fieldErr(ErrCorrupt, "FS descriptor", "pb2FDAddr", fsDescriptorOff, "0x%08x is not an FD address", addr)
	}
	if v.fs.pb2VolAddr != 0 {
		if v.fs.pb2VolAddr > 1<<62 {
			return nil, addr, fieldErr(ErrCorrupt, "FS descriptor", "pb2VolAddr", fsDescriptorOff, "0x%x", v.fs.pb2VolAddr)
		}
		fd, err := v.fdAtLoc(int64(v.fs.pb2VolAddr), addr, ".pb2.sf")
		return fd, addr, err
	}
	fd, err := v.sysFD(addr, ".pb2.sf")
	if err != nil || fd.typ != typeSysFile {
		return nil, addr, nil // no .pb2.sf (§13.2: optional on VMFS5)
	}
	return fd, addr, nil
}

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
