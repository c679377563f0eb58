package vmfs

import (
	"fmt"
	"math"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// maxDepth bounds nested resolutions through resource files (an SB of a
// file lives in .sbc.sf, whose pointer blocks live in .pb2.sf, …): a loop
// among resource files is reported instead of recursing forever.
const maxDepth = 6

// inode is an open file: its decoded FD and the derived mapping parameters.
// It is immutable and shared.
type inode struct {
	v       *Volume
	fd      *fdesc
	addr    uint32
	path    string
	bs      int64 // per-file block size: bytes covered by one pointer
	shift   uint
	nblocks int64 // blocks covering fileLength
}

// newInode validates fd for reading.
func (v *Volume) newInode(fd *fdesc, addr uint32, path string) (*inode, error) {
	ino := &inode{v: v, fd: fd, addr: addr, path: path}
	bad := func(field, format string, args ...any) error {
		e := fieldErr(ErrCorrupt, "file descriptor", field, -1, format, args...)
		e.Path, e.FD = path, addr
		return e
	}
	if fd.size > 1<<62 {
		return nil, bad("fileLength", "%d bytes", fd.size)
	}
	size := int64(fd.size)
	switch fd.zla {
	case zlaResident:
		if size > int64(len(fd.resident)) {
			return nil, bad("fileLength", "%d bytes of resident data, the FD holds at most %d", size, len(fd.resident))
		}
		return ino, nil
	case zlaFB, zlaSB, zlaPB, zlaPB2, zlaDouble:
	default:
		if fd.typ == typeRDM {
			return ino, nil
		}
		e := fieldErr(ErrUnsupported, "file descriptor", "zeroLevelAddrType", -1, "ZLA 0x%x", fd.zla)
		e.Path, e.FD = path, addr
		return nil, e
	}
	if fd.typ == typeRDM {
		return ino, nil
	}
	if !isPow2(fd.blockSize) || fd.blockSize < 512 || fd.blockSize > 1<<30 {
		return nil, bad("blockSize", "%d", fd.blockSize)
	}
	ino.bs, ino.shift = int64(fd.blockSize), log2(fd.blockSize)
	if fd.offShift != 0 && uint(fd.offShift) != ino.shift {
		return nil, bad("blockOffsetShift", "%d, but blockSize is %d", fd.offShift, fd.blockSize)
	}
	ino.nblocks = (size + ino.bs - 1) >> ino.shift
	// The pointer tree must be able to address every block of the file.
	capBlocks := int64(len(fd.ptrs))
	P := v.ppb
	switch fd.zla {
	case zlaPB, zlaPB2:
		capBlocks *= P
	case zlaDouble:
		capBlocks *= P * P
	}
	if ino.nblocks > capBlocks {
		return nil, bad("fileLength", "%d bytes, but ZLA 0x%x with %d-byte blocks addresses at most %d blocks", size, fd.zla, ino.bs, capBlocks)
	}
	return ino, nil
}

func (ino *inode) size() int64    { return int64(ino.fd.size) }
func (ino *inode) resident() bool { return ino.fd.zla == zlaResident }
func (ino *inode) isRDM() bool    { return ino.fd.typ == typeRDM }

func (ino *inode) errorf(sentinel error, what string, vol int64, format string, args ...any) *Error {
	e := errf(sentinel, what, vol, format, args...)
	e.Path, e.FD = ino.path, ino.addr
	return e
}

// run is a maximal stretch of file blocks of one kind, found in one pointer
// array: n blocks from blk; Data runs are contiguous on the volume from loc.
type run struct {
	kind   formats.Kind
	blk, n int64
	loc    int64
}

// runAt returns the run starting at file block blk (< nblocks), scanning at
// most want blocks ahead.
func (ino *inode) runAt(blk, want int64, depth int) (run, error) {
	v := ino.v
	P := v.ppb
	ptrs := ino.fd.ptrs
	if blk < 0 || blk >= ino.nblocks {
		return run{}, ino.errorf(ErrCorrupt, "block map", -1, "block %d outside the file's %d blocks", blk, ino.nblocks)
	}
	hole := func(end int64) (run, error) {
		return run{kind: formats.Hole, blk: blk, n: min(end, ino.nblocks) - blk}, nil
	}
	var leaf []uint64
	var idx, base int64
	var src uint64 // the pointer block holding leaf, 0 for the FD
	switch ino.fd.zla {
	case zlaFB, zlaSB:
		leaf, idx, base = ptrs, blk, 0
	case zlaPB, zlaPB2:
		top := blk / P
		p := ptrs[top]
		if p == 0 {
			return hole((top + 1) * P)
		}
		pb, err := v.ptrBlock(ino, p, depth+1)
		if err != nil {
			return run{}, err
		}
		leaf, idx, base, src = pb, blk%P, top*P, p
	case zlaDouble:
		top := blk / (P * P)
		p1 := ptrs[top]
		if p1 == 0 {
			return hole((top + 1) * P * P)
		}
		pb1, err := v.ptrBlock(ino, p1, depth+1)
		if err != nil {
			return run{}, err
		}
		p2 := pb1[(blk/P)%P]
		if p2 == 0 {
			return hole((blk/P + 1) * P)
		}
		pb2, err := v.ptrBlock(ino, p2, depth+1)
		if err != nil {
			return run{}, err
		}
		leaf, idx, base, src = pb2, blk%P, (blk/P)*P, p2
	default:
		return run{}, ino.errorf(ErrUnsupported, "file descriptor", -1, "ZLA 0x%x has no block map", ino.fd.zla)
	}
	limit := min(int64(len(leaf)), ino.nblocks-base, idx+max(want, 1))
	r, err := ino.scan(leaf, idx, base, limit, depth)
	if err != nil {
		where := fmt.Sprintf("FD pointer %d", idx)
		if src != 0 {
			where = fmt.Sprintf("pointer block %s entry %d", addrString(src), idx)
		}
		err = annotate(err, fmt.Sprintf("file block %d (%s)", blk, where))
	}
	return r, err
}

// scan builds the run starting at leaf[idx] (file block base+idx), looking
// no further than leaf[limit-1].
func (ino *inode) scan(leaf []uint64, idx, base, limit int64, depth int) (run, error) {
	v := ino.v
	a0 := leaf[idx]
	j := idx + 1
	switch {
	case a0 == 0:
		for j < limit && leaf[j] == 0 {
			j++
		}
		return run{kind: formats.Hole, blk: base + idx, n: j - idx}, nil
	case v.af.tbz(a0):
		for j < limit && leaf[j] != 0 && v.af.tbz(leaf[j]) {
			j++
		}
		return run{kind: formats.Zero, blk: base + idx, n: j - idx}, nil
	}
	loc0, err := v.locate(ino, a0, ino.bs, depth)
	if err != nil {
		return run{}, err
	}
	for ; j < limit; j++ {
		a := leaf[j]
		if a == 0 || v.af.tbz(a) || addrType(a) != addrType(a0) {
			break
		}
		loc, err := v.locate(ino, a, ino.bs, depth)
		if err != nil || loc != loc0+(j-idx)*ino.bs {
			break // an error is reported when the caller reaches block j
		}
	}
	return run{kind: formats.Data, blk: base + idx, n: j - idx, loc: loc0}, nil
}

// locate returns the logical offset of the bs bytes a data address points
// to.
func (v *Volume) locate(ino *inode, a uint64, bs int64, depth int) (int64, error) {
	var loc, unit int64
	var ok bool
	switch t := addrType(a); {
	case t == akFB && !v.af.wide:
		loc, ok = mulOK(int64(fbBlock(a)), v.fsbs)
		unit = v.fsbs
	case t == akFB:
		c, r := sfbClusterRes(a)
		if r >= v.sfbRPC {
			return 0, ino.errorf(ErrCorrupt, "block map", -1, "%s: resource %d, a cluster holds %d SFBs", addrString(a), r, v.sfbRPC)
		}
		n, ok1 := mulOK(int64(c), int64(v.sfbRPC))
		loc, ok = mulOK(n+int64(r), v.fsbs)
		ok = ok && ok1
		unit = v.fsbs
	case t == akLFB && v.af.wide:
		b := int64(lfbBlock(a))
		ok = b < 1<<(62-v.lfbShift)
		loc, unit = b<<v.lfbShift, 1<<v.lfbShift
	case t == akSB:
		rf, err := v.needRes(ino, kSBC, "block map")
		if err != nil {
			return 0, annotate(err, addrString(a))
		}
		off, err := rf.offset(v.af.clusterRes(a))
		if err != nil {
			return 0, withFile(annotate(err, addrString(a)), ino.path, ino.addr)
		}
		unit = int64(rf.h.resSize)
		if bs > unit {
			return 0, ino.errorf(ErrCorrupt, "block map", -1, "%s: %d-byte blocks in %d-byte sub-blocks", addrString(a), bs, unit)
		}
		loc, err = rf.ino.contig(off, bs, depth+1)
		if err != nil {
			return 0, withFile(annotate(err, addrString(a)), ino.path, ino.addr)
		}
		ok = true
	case t == akLFB:
		return 0, ino.errorf(ErrCorrupt, "block map", -1, "%s: large file blocks exist on VMFS6 only", addrString(a))
	default:
		return 0, ino.errorf(ErrCorrupt, "block map", -1, "%s is not a data address", addrString(a))
	}
	if !ok || bs > unit || loc > v.lv.size-bs {
		return 0, ino.errorf(ErrCorrupt, "block map", -1, "%s (%d-byte blocks) lies outside the %d-byte volume", addrString(a), bs, v.lv.size)
	}
	return loc, nil
}

// annotate prefixes the message of an *Error.
func annotate(err error, prefix string) error {
	if e, ok := err.(*Error); ok {
		e.Msg = prefix + ": " + e.Msg
	}
	return err
}

// contig returns the logical offset of bytes [off, off+n) of the file, which
// must be stored contiguously (metadata inside a resource file).
func (ino *inode) contig(off, n int64, depth int) (int64, error) {
	if depth > maxDepth {
		return 0, ino.errorf(ErrCorrupt, "block map", -1, "resource files nest deeper than %d levels (a loop?)", maxDepth)
	}
	if off < 0 || n <= 0 || off > ino.size()-n {
		return 0, ino.errorf(ErrCorrupt, "block map", -1, "bytes [0x%x, +0x%x) lie past the end of the %d-byte file", off, n, ino.size())
	}
	if ino.resident() || ino.isRDM() {
		return 0, ino.errorf(ErrCorrupt, "block map", -1, "resource file without blocks")
	}
	blk := off >> ino.shift
	last := (off + n - 1) >> ino.shift
	r, err := ino.runAt(blk, last-blk+1, depth)
	if err != nil {
		return 0, err
	}
	if r.kind != formats.Data {
		return 0, ino.errorf(ErrCorrupt, "block map", -1, "metadata at file offset 0x%x lies in a %s block", off, r.kind)
	}
	if r.blk+r.n <= last {
		return 0, ino.errorf(ErrUnsupported, "block map", -1, "metadata [0x%x, +0x%x) straddles non-contiguous blocks", off, n)
	}
	return r.loc + (off - r.blk<<ino.shift), nil
}

// ptrBlock returns the decoded entries of the pointer block at address p.
func (v *Volume) ptrBlock(ino *inode, p uint64, depth int) ([]uint64, error) {
	key := cacheKey{kind: ckPB, a: p}
	if x, ok := v.cache.get(key); ok {
		return x.([]uint64), nil
	}
	what := "pointer block " + addrString(p)
	if depth > maxDepth {
		return nil, ino.errorf(ErrCorrupt, what, -1, "resource files nest deeper than %d levels (a loop?)", maxDepth)
	}
	width := int64(v.lay.ptrBytes)
	need := v.ppb * width
	buf := make([]byte, need)
	var k resKind
	switch addrType(p) {
	case akPB:
		k = kPBC
	case akPB2:
		k = kPB2
	case akSB:
		k = kSBC
	case akFB, akLFB:
		// A pointer block in a file block (dissect reads pointer blocks
		// by address type, file blocks included).
		if v.af.tbz(p) {
			return nil, ino.errorf(ErrUnsupported, what, -1, "a to-be-zeroed file block as a pointer block is unsupported")
		}
		loc, err := v.locate(ino, p, need, depth)
		if err != nil {
			return nil, annotate(err, what)
		}
		if err := v.lv.readAt(buf, loc, what); err != nil {
			return nil, withFile(err, ino.path, ino.addr)
		}
		return v.putPtrBlock(key, buf), nil
	default:
		return nil, ino.errorf(ErrCorrupt, what, -1, "not a pointer-block address")
	}
	rf, err := v.needRes(ino, k, what)
	if err != nil {
		return nil, err
	}
	off, err := rf.offset(v.af.clusterRes(p))
	if err != nil {
		return nil, withFile(annotate(err, what), ino.path, ino.addr)
	}
	if need > int64(rf.h.resSize) {
		return nil, ino.errorf(ErrCorrupt, what, -1, "%d-byte pointer block in %d-byte resources of %s", need, rf.h.resSize, rf.name)
	}
	// Read through the resource file's block map: a pointer block may
	// straddle two non-contiguous blocks of it.
	if err := rf.ino.fill(buf, off, depth+1, true); err != nil {
		return nil, withFile(annotate(err, what), ino.path, ino.addr)
	}
	return v.putPtrBlock(key, buf), nil
}

// putPtrBlock decodes and caches the pointer block buf.
func (v *Volume) putPtrBlock(key cacheKey, buf []byte) []uint64 {
	width := int64(v.lay.ptrBytes)
	ptrs := make([]uint64, v.ppb)
	for i := range ptrs {
		if width == 4 {
			ptrs[i] = uint64(u32(buf, 4*i))
		} else {
			ptrs[i] = u64(buf, 8*i)
		}
	}
	v.cache.put(key, ptrs, int64(len(ptrs))*8)
	return ptrs
}

// fill reads len(p) bytes at off (within the file) into p. strict rejects
// holes and TBZ blocks (metadata must be stored).
func (ino *inode) fill(p []byte, off int64, depth int, strict bool) error {
	if ino.isRDM() {
		return ino.errorf(ErrNoData, "raw device mapping", -1, "its data is on a LUN, not on the volume")
	}
	if off < 0 || off > ino.size()-int64(len(p)) {
		return ino.errorf(ErrCorrupt, "file", -1, "read [0x%x, +0x%x) past its %d bytes", off, len(p), ino.size())
	}
	if ino.resident() {
		copy(p, ino.fd.resident[off:])
		return nil
	}
	v := ino.v
	end := off + int64(len(p))
	var pLoc, pOff, pLen int64 // pending device read: logical pLoc into p[pOff:pOff+pLen]
	flush := func() error {
		if pLen == 0 {
			return nil
		}
		err := v.lv.readAt(p[pOff:pOff+pLen], pLoc, "file data")
		pLen = 0
		return withFile(err, ino.path, ino.addr)
	}
	for pos := off; pos < end; {
		blk := pos >> ino.shift
		want := (end-1)>>ino.shift - blk + 1
		r, err := ino.runAt(blk, want, depth)
		if err != nil {
			return err
		}
		rEnd := min((r.blk+r.n)<<ino.shift, end)
		seg := rEnd - pos
		switch r.kind {
		case formats.Data:
			loc := r.loc + (pos - r.blk<<ino.shift)
			if pLen > 0 && pLoc+pLen == loc && pOff+pLen == pos-off {
				pLen += seg
			} else {
				if err := flush(); err != nil {
					return err
				}
				pLoc, pOff, pLen = loc, pos-off, seg
			}
		default:
			if strict {
				return ino.errorf(ErrCorrupt, "file", -1, "metadata at file offset 0x%x lies in a %s block", pos, r.kind)
			}
			clear(p[pos-off : rEnd-off])
		}
		pos = rEnd
	}
	return flush()
}

// locate answers File.Locate for [off, off+n) within the file.
func (ino *inode) locate(off, n int64) (formats.Location, error) {
	if ino.isRDM() || ino.resident() {
		return formats.Location{Len: n}, nil
	}
	end := off + n
	r, err := ino.runAt(off>>ino.shift, (end-1)>>ino.shift-off>>ino.shift+1, 0)
	if err != nil {
		return formats.Location{}, err
	}
	l := min((r.blk+r.n)<<ino.shift, end) - off
	if r.kind != formats.Data {
		return formats.Location{Len: l}, nil
	}
	d, pOff, l, err := ino.v.lv.locate(r.loc+(off-r.blk<<ino.shift), l)
	if err != nil {
		return formats.Location{}, withFile(err, ino.path, ino.addr)
	}
	return formats.Location{R: d.R, Off: pOff, Len: l}, nil
}

// maxExtentRuns bounds the runs merged by one extent query.
const maxExtentRuns = 1024

// extent returns the run of one kind starting at off, merging up to
// maxExtentRuns runs.
func (ino *inode) extent(off int64) (formats.Extent, error) {
	size := ino.size()
	if off < 0 || off >= size {
		return formats.Extent{}, ino.errorf(formats.ErrOutOfRange, "file", -1, "extent query at %d of a %d-byte file", off, size)
	}
	if ino.isRDM() {
		return formats.Extent{}, ino.errorf(ErrNoData, "raw device mapping", -1, "its data is on a LUN, not on the volume")
	}
	if ino.resident() {
		return formats.Extent{Off: off, Len: size - off, Kind: formats.Data}, nil
	}
	r, err := ino.runAt(off>>ino.shift, math.MaxInt64, 0)
	if err != nil {
		return formats.Extent{}, err
	}
	endBlk := r.blk + r.n
	for i := 0; i < maxExtentRuns && endBlk < ino.nblocks; i++ {
		r2, err := ino.runAt(endBlk, math.MaxInt64, 0)
		if err != nil || r2.kind != r.kind {
			break // an error surfaces when the caller asks at endBlk
		}
		endBlk = r2.blk + r2.n
	}
	end := size
	if endBlk < ino.nblocks {
		end = endBlk << ino.shift
	}
	return formats.Extent{Off: off, Len: end - off, Kind: r.kind}, nil
}

func (ino *inode) String() string { return fmt.Sprintf("FD 0x%08x (%s)", ino.addr, ino.path) }
