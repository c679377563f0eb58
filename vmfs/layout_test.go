package vmfs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

// tvol builds a bare logical volume (FS descriptor at 2 MiB, no LVM
// header) in memory, with 1 MiB file blocks, whose system files may be
// mapped through any kind of block — unlike memVol, it is opened by Open,
// so the resource files bootstrap as on a real volume (§6.2, §15.1).
type tvol struct {
	t        testing.TB
	ver      int
	mem      []byte
	bs       int64
	md, H    int64
	lay      fdLayout
	fdcStart int64
	next     int64 // next unused block
	// The resource files, once placed (their geometry locates resources).
	fdc, sbc, pbc, pb2 *tres
	fs                 fsDesc // fields written by writeFS
	magic              uint32
}

// tfile is a file's blocks: the logical offset of each bs-byte block.
type tfile struct {
	locs []int64
	bs   int64
}

func (f *tfile) loc(off int64) int64 { return f.locs[off/f.bs] + off%f.bs }

// tres is a resource file laid out by tvol.
type tres struct {
	tfile
	h resHeader
	H int64
}

// resLoc is the logical offset of resource (c, r) (§6.1).
func (r *tres) resLoc(c, res int64) int64 {
	g, k := c/int64(r.h.cpg), c%int64(r.h.cpg)
	off := int64(r.h.cgOffset) + g*int64(r.h.cgSize) + int64(r.h.cpg)*r.H + (k*int64(r.h.rpc)+res)*int64(r.h.resSize)
	return r.loc(off)
}

const tBS = 1 << 20

func newTVol(t testing.TB, ver int, blocks int) *tvol {
	v := &tvol{t: t, ver: ver, mem: make([]byte, blocks*tBS), bs: tBS, magic: fsMagic}
	if ver == 6 {
		v.md, v.H = 0x1000, 0x2000
		v.lay = layoutFor(6, 0x1000)
		v.fdcStart = 7 << 20
	} else {
		v.H = 0x400
		v.lay = layoutFor(5, 0)
		v.fdcStart = 4 << 20
	}
	v.next = v.fdcStart/tBS + 1
	return v
}

// block returns a fresh block number.
func (v *tvol) block() int64 {
	v.next++
	return v.next - 1
}

// fb returns the FB/SFB address of block n (SFB: 512 per cluster).
func (v *tvol) fb(n int64) uint64 {
	if v.ver == 6 {
		return 1 | uint64(n/512)<<15 | uint64(n%512)<<51
	}
	return 1 | uint64(n)<<6
}

// addr returns an SB/PB/PB2 address of (c, r).
func (v *tvol) addr(typ uint64, c, r int64) uint64 {
	if v.ver == 6 {
		return typ | uint64(c)<<6 | uint64(r)<<56
	}
	a := typ | uint64(c)<<6 | uint64(r&15)<<28
	if typ == akSB {
		a |= uint64(r>>4&3) << 3 // dense SBPC
	}
	return a
}

// ptrLoc returns where the pointer block or sub-block at address a lives.
func (v *tvol) ptrLoc(a uint64) int64 {
	var rf *tres
	switch addrType(a) {
	case akSB:
		rf = v.sbc
	case akPB:
		rf = v.pbc
	case akPB2:
		rf = v.pb2
	case akFB:
		if v.ver == 6 {
			c, r := sfbClusterRes(a)
			return int64(c*512+r) * tBS
		}
		return int64(fbBlock(a)) * tBS
	}
	c, r := (addrFormat{wide: v.ver == 6, dense: true}).clusterRes(a)
	return rf.resLoc(int64(c), int64(r))
}

// putPtrs writes the pointer block at address a.
func (v *tvol) putPtrs(a uint64, ptrs []uint64) {
	loc := v.ptrLoc(a)
	for i, p := range ptrs {
		if v.ver == 6 {
			le.PutUint64(v.mem[loc+int64(8*i):], p)
		} else {
			le.PutUint32(v.mem[loc+int64(4*i):], uint32(p))
		}
	}
}

// tmap is how a file is mapped: its ZLA, per-file block size, the FD
// pointer array and, for pointer blocks, their contents.
type tmap struct {
	zla  uint32
	bs   int64
	ptrs []uint64
	pbs  map[uint64][]uint64 // pointer block address → entries
	locs []int64             // logical offset of each file block
}

// direct maps n file blocks at the given block numbers.
func (v *tvol) direct(blocks ...int64) tmap {
	m := tmap{zla: zlaFB, bs: tBS}
	for _, b := range blocks {
		m.ptrs = append(m.ptrs, v.fb(b))
		m.locs = append(m.locs, b*tBS)
	}
	return m
}

// indirect maps the given blocks through one pointer block at address pb
// (zla 3 or 5).
func (v *tvol) indirect(zla uint32, pb uint64, blocks ...int64) tmap {
	d := v.direct(blocks...)
	return tmap{zla: zla, bs: tBS, ptrs: []uint64{pb}, pbs: map[uint64][]uint64{pb: d.ptrs}, locs: d.locs}
}

// subBlocks maps a file onto the given SB addresses (resolved later, when
// .sbc.sf is placed).
func (v *tvol) subBlocks(sbs ...uint64) tmap {
	return tmap{zla: zlaSB, bs: int64(v.sbSize()), ptrs: sbs}
}

func (v *tvol) sbSize() uint32 {
	if v.ver == 6 {
		return 64 << 10
	}
	return 8 << 10
}

// place lays out a resource file with header h over map m; size is the
// file length.
func (v *tvol) place(h resHeader, m tmap, size int64) *tres {
	if v.ver == 6 {
		h.signature, h.version = 0x72666D64, 1
	}
	if h.cgOffset == 0 {
		h.cgOffset = 0x10000
	}
	r := &tres{tfile: tfile{locs: m.locs, bs: m.bs}, h: h, H: v.H}
	if int64(len(m.locs))*m.bs < size {
		v.t.Fatalf("resource file of %d bytes in %d blocks", size, len(m.locs))
	}
	b := v.mem[r.loc(0):]
	for i, x := range []uint32{h.rpc, h.cpg, h.cgOffset, h.resSize, h.cgSize, h.numResLo, h.numGroups, h.numResHi,
		h.signature, h.version, h.flags} {
		le.PutUint32(b[4*i:], x)
	}
	le.PutUint32(b[0x34:], h.childMetaOffset)
	le.PutUint32(b[0x38:], h.parentRPC)
	le.PutUint32(b[0x3C:], h.parentCPG)
	le.PutUint32(b[0x40:], h.parentCGSize)
	return r
}

// geometry of the resource files (VMFS6 / VMFS5).
func (v *tvol) fdcHeader(groups uint32) resHeader {
	fs := uint32(v.lay.size)
	rpc := uint32(64)
	if v.ver != 6 {
		rpc = 32
	}
	return resHeader{rpc: rpc, cpg: 1, resSize: fs, cgSize: uint32(v.H) + rpc*fs, numGroups: groups, numResLo: rpc * groups}
}

func (v *tvol) resGeom(rpc, size, groups uint32) resHeader {
	return resHeader{rpc: rpc, cpg: 1, resSize: size, cgSize: uint32(v.H) + rpc*size, numGroups: groups, numResLo: rpc * groups}
}

func (h resHeader) fileSize(H int64) int64 {
	return int64(h.cgOffset|0x10000) + int64(h.numGroups)*int64(h.cgSize)
}

// putFD writes the FD addr through .fdc.sf.
func (v *tvol) putFD(addr uint32, typ uint32, size int64, m tmap, mode uint32) {
	c, r := fdClusterRes(addr)
	loc := v.fdc.resLoc(int64(c), int64(r))
	v.putFDAt(loc, addr, typ, size, m, mode)
	for pb, ents := range m.pbs {
		v.putPtrs(pb, ents)
	}
}

func (v *tvol) putFDAt(loc int64, addr uint32, typ uint32, size int64, m tmap, mode uint32) {
	b := v.mem[loc : loc+int64(v.lay.size)]
	clear(b)
	le.PutUint32(b[0:], fdLockType)
	le.PutUint64(b[4:], uint64(loc))
	md := b[v.lay.meta:]
	le.PutUint32(md[0x00:], addr)
	le.PutUint32(md[0x08:], 1)
	le.PutUint32(md[0x0C:], typ)
	le.PutUint64(md[0x14:], uint64(size))
	le.PutUint64(md[0x1C:], uint64(m.bs))
	le.PutUint64(md[0x24:], uint64(len(m.ptrs)))
	le.PutUint32(md[0x40:], mode)
	le.PutUint32(md[0x44:], m.zla)
	md[0x89] = byte(log2(uint64(m.bs)))
	if v.ver == 6 {
		le.PutUint32(md[0x64:], 0x66646D64)
	}
	for i, p := range m.ptrs {
		if v.ver == 6 {
			le.PutUint64(b[v.lay.ptrs+8*i:], p)
		} else {
			le.PutUint32(b[v.lay.ptrs+4*i:], uint32(p))
		}
	}
}

// writeFile writes content through map m (sub-blocks resolved through
// .sbc.sf).
func (v *tvol) writeFile(m tmap, content []byte) {
	for off := int64(0); off < int64(len(content)); off += m.bs {
		n := off / m.bs
		var loc int64
		switch m.zla {
		case zlaSB:
			loc = v.ptrLoc(m.ptrs[n])
		default:
			loc = m.locs[n]
		}
		copy(v.mem[loc:loc+m.bs], content[off:])
	}
}

// writeFS writes the FS descriptor.
func (v *tvol) writeFS() {
	b := v.mem[fsDescriptorOff:]
	le.PutUint32(b[0x00:], v.magic)
	if v.ver == 6 {
		le.PutUint32(b[0x04:], 24)
		b[0x08] = 82
	} else {
		le.PutUint32(b[0x04:], 14)
		b[0x08] = 81
		le.PutUint32(b[0x19:], 0x6) // DENSE_SBPC
	}
	copy(b[0x1D:], "layout test")
	le.PutUint32(b[0x9D:], 512)
	le.PutUint64(b[0xA1:], tBS)
	le.PutUint32(b[0xD1:], 0x10000)
	le.PutUint32(b[0xD5:], 1) // fdcClustersPerGroup, as in fdcHeader
	le.PutUint32(b[0xD9:], v.sbSize())
	le.PutUint64(b[0xE1:], v.fs.pb2VolAddr)
	le.PutUint32(b[0xE9:], v.fs.pb2FDAddr)
	if v.ver == 6 {
		le.PutUint32(b[0x130:], 512)
		le.PutUint32(b[0x134:], uint32(v.md))
		le.PutUint16(b[0x138:], 9)
		le.PutUint16(b[0x13E:], 16)
	}
}

// open opens the volume.
func (v *tvol) open() (*Volume, error) {
	return Open(Device{Name: "tvol", R: bytes.NewReader(v.mem), Size: int64(len(v.mem))})
}

// pattern is distinct content of n bytes.
func pattern(seed, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*31 + i*7 + i/251)
	}
	return b
}

// dirContent builds a directory file holding the given children: a VMFS6
// hashed directory (header, allocation map, one entry block; 0x12000
// bytes) or a VMFS3/5 linear one.
func (v *tvol) dirContent(self, parent uint32, root bool, names []string, fds []uint32) []byte {
	if v.ver != 6 {
		var b []byte
		add := func(name string, addr uint32) {
			e := make([]byte, linEntrySize)
			le.PutUint32(e[0:], typeRegular)
			le.PutUint32(e[4:], addr)
			copy(e[linNameOff:], name)
			b = append(b, e...)
		}
		add(".", self)
		add("..", parent)
		for i, n := range names {
			add(n, fds[i])
		}
		return b
	}
	d := newHashedDir(int(v.md), 2)
	le.PutUint32(d.b[hdNumEntries:], 2)
	le.PutUint32(d.b[hdDot+4:], self)
	le.PutUint32(d.b[hdDotDot+4:], parent)
	d.entryBlock(1)
	for i, n := range names {
		d.setSlot(hashIndex(n, root), d.addEntry(1, i, n, fds[i], false))
	}
	return d.b
}

// tlayout says how each system file and directory of a test volume is
// mapped.
type tlayout struct {
	name string
	ver  int
	// Each is "direct" (default), "noncontig", "pb2" (ZLA 5 via .pb2.sf),
	// "sbpb" (ZLA 3 through an SB pointer block, VMFS6), "pb" (ZLA 3 via
	// .pbc.sf, VMFS5), "self" (through a pointer block of its own kind: a
	// loop).
	fdc, sbc, pbc, pb2, fbb string
	rootSB                  bool // root directory in sub-blocks
	pb2FromFS               bool // .pb2.sf FD located by pb2VolAddr/pb2FDAddr only
	local                   bool // VMFS-L magic
	// what the test expects
	mountErr, subErr string // substrings of the errors, "" = success
}

// tfiles is what a built test volume holds.
type tfiles struct {
	big, small []byte
}

// build lays out the volume described by l: system files, a root
// directory with a multi-block file "big" and a sub-block directory "sub"
// holding a sub-block file "small". FDs of user files live in cluster 1 of
// .fdc.sf, i.e. in its second block.
func buildLayout(t testing.TB, l tlayout) (*tvol, tfiles) {
	v := newTVol(t, l.ver, 48)
	if l.local {
		v.magic = fsMagicLocal
	}
	// The mapping of a system file of nblocks blocks, with its first block
	// at first (FDC start for .fdc.sf), per the layout word.
	var later []func() // pointer blocks written once every resource is placed
	// pbRes is the resource of the pointer block (distinct per file), self
	// the address of a pointer block of the file's own kind (a loop).
	mapFor := func(how string, first int64, nblocks int, self uint64, pbRes int64) tmap {
		blocks := []int64{first}
		for i := 1; i < nblocks; i++ {
			blocks = append(blocks, v.block())
		}
		if how == "noncontig" || how == "" || how == "direct" {
			if how == "noncontig" && nblocks == 1 {
				t.Fatal("noncontig needs two blocks")
			}
			if how == "noncontig" {
				v.block() // a gap before the next block
				blocks[len(blocks)-1] = v.block()
			}
			return v.direct(blocks...)
		}
		var pb uint64
		zla := uint32(zlaPB)
		switch how {
		case "pb2":
			pb, zla = v.addr(akPB2, 0, pbRes), zlaPB2
		case "sbpb":
			pb = v.addr(akSB, 0, pbRes)
		case "pb":
			pb = v.addr(akPB, 0, pbRes)
		case "self":
			pb = self
			if addrType(self) == akPB2 {
				zla = zlaPB2
			}
		default:
			t.Fatalf("layout %q", how)
		}
		// Non-contiguous blocks behind the pointer block.
		if nblocks > 1 {
			v.block()
			blocks[len(blocks)-1] = v.block()
		}
		m := v.indirect(zla, pb, blocks...)
		return m
	}
	// User FDs and sub-blocks live in cluster uc of .fdc.sf / .sbc.sf:
	// in the second block of each.
	uc, ur := int64(1), int64(60)
	if l.ver != 6 {
		uc, ur = 16, 28
	}
	sys := map[string]uint32{}
	putSys := func(name string, r uint64, size int64, m tmap) {
		sys[name] = fdAddr(0, r)
		later = append(later, func() { v.putFD(fdAddr(0, r), typeSysFile, size, m, 0o400) })
	}

	// .fdc.sf: 2 cluster groups, 2 blocks, the first at FDC start.
	fh := v.fdcHeader(uint32(uc + 1))
	fdcSize := fh.fileSize(v.H)
	fdcMap := mapFor(l.fdc, v.fdcStart/tBS, int((fdcSize+tBS-1)/tBS), 0, 1)
	v.fdc = v.place(fh, fdcMap, fdcSize)
	putSys(".fdc.sf", resFDC, fdcSize, fdcMap)

	// .pb2.sf: one group of 64 KiB (VMFS6) / 4 KiB resources.
	pbSize := uint32(64 << 10)
	if l.ver != 6 {
		pbSize = 4 << 10
	}
	ph := v.resGeom(8, pbSize, 1)
	pb2Size := ph.fileSize(v.H)
	pb2Map := mapFor(l.pb2, v.block(), int((pb2Size+tBS-1)/tBS), v.addr(akPB2, 0, 0), 0)
	v.pb2 = v.place(ph, pb2Map, pb2Size)
	if l.pb2FromFS {
		// Not in cluster 0 resource 6 of .fdc.sf: only the FS descriptor
		// says where it is.
		v.fs.pb2FDAddr = fdAddr(uint64(uc), 20)
		v.fs.pb2VolAddr = uint64(v.fdc.resLoc(uc, 20))
		sys[".pb2.sf"] = v.fs.pb2FDAddr
		later = append(later, func() {
			v.putFD(v.fs.pb2FDAddr, typeSysFile, pb2Size, pb2Map, 0o400)
		})
	} else {
		putSys(".pb2.sf", resPB2, pb2Size, pb2Map)
		// As ESXi writes them (dissect opens .pb2.sf only when
		// pb2VolAddr is set).
		v.fs.pb2FDAddr = fdAddr(0, resPB2)
		v.fs.pb2VolAddr = uint64(v.fdc.resLoc(0, resPB2))
	}

	// .sbc.sf: 2 groups, 2 blocks.
	sh := v.resGeom(8, v.sbSize(), uint32(uc+1))
	sbcSize := sh.fileSize(v.H)
	sbcMap := mapFor(l.sbc, v.block(), int((sbcSize+tBS-1)/tBS), v.addr(akSB, 0, 3), 2)
	v.sbc = v.place(sh, sbcMap, sbcSize)
	putSys(".sbc.sf", resSBC, sbcSize, sbcMap)

	// .pbc.sf: VMFS6 header only; VMFS5 4 KiB pointer blocks.
	pch := resHeader{cpg: 8, resSize: 64 << 10, cgSize: uint32(8 * v.H), numGroups: 1}
	if l.ver != 6 {
		pch = v.resGeom(16, 4<<10, 1)
	}
	pbcSize := pch.fileSize(v.H)
	pbcMap := mapFor(l.pbc, v.block(), int((pbcSize+tBS-1)/tBS), v.addr(akPB, 0, 3), 3)
	v.pbc = v.place(pch, pbcMap, pbcSize)
	putSys(".pbc.sf", resPBC, pbcSize, pbcMap)

	// .fbb.sf.
	var fbbMap tmap
	if l.ver == 6 {
		lh := resHeader{rpc: 16, cpg: 8, resSize: 0x2000, cgSize: 0x110000, numGroups: 1, numResLo: 1, childMetaOffset: 0x1000, flags: 0x35}
		fbbSize := int64(0x22000)
		fbbMap = mapFor(l.fbb, v.block(), 1, 0, 4)
		fbb := v.place(lh, fbbMap, fbbSize)
		// The SFB child header at 0x1000.
		c := &tres{tfile: fbb.tfile, H: v.H}
		ch := resHeader{rpc: 512, cpg: 8, cgOffset: 0x10000, cgSize: 0x10000, numGroups: 1, numResLo: uint32(len(v.mem) / tBS),
			flags: 0x2A, parentRPC: 16, parentCPG: 8, parentCGSize: 0x110000, signature: 0x72666D64, version: 1}
		b := v.mem[c.loc(0x1000):]
		for i, x := range []uint32{ch.rpc, ch.cpg, ch.cgOffset, ch.resSize, ch.cgSize, ch.numResLo, ch.numGroups, ch.numResHi, ch.signature, ch.version, ch.flags} {
			le.PutUint32(b[4*i:], x)
		}
		le.PutUint32(b[0x38:], ch.parentRPC)
		le.PutUint32(b[0x3C:], ch.parentCPG)
		le.PutUint32(b[0x40:], ch.parentCGSize)
		putSys(".fbb.sf", resFBB, fbbSize, fbbMap)
	} else {
		fh := resHeader{rpc: 200, cpg: 8, resSize: 0, cgSize: uint32(8 * v.H), numGroups: 1}
		fbbSize := fh.fileSize(v.H)
		fbbMap = mapFor(l.fbb, v.block(), 1, 0, 4)
		v.place(fh, fbbMap, fbbSize)
		putSys(".fbb.sf", resFBB, fbbSize, fbbMap)
	}

	// .jbc.sf (VMFS6): header only; dissect needs it.
	if l.ver == 6 {
		jh := resHeader{rpc: 8, cpg: 4, resSize: 2 << 20, cgSize: uint32(4*v.H) + 4*8*(2<<20)}
		jbcMap := v.direct(v.block())
		v.place(jh, jbcMap, 0x10000)
		putSys(".jbc.sf", resJBC, 0x10000, jbcMap)
	}

	// User files: big (3 non-contiguous blocks, the last partial), sub/small
	// in one sub-block; FDs in cluster 1 of .fdc.sf.
	bigFD, subFD, smallFD := fdAddr(uint64(uc), uint64(ur)), fdAddr(uint64(uc), uint64(ur+1)), fdAddr(uint64(uc), uint64(ur+2))
	b1, b2 := v.block(), v.block()
	v.block()
	b3 := v.block()
	files := tfiles{big: pattern(1, 2*tBS+12345), small: pattern(2, 5000)}
	bigMap := v.direct(b1, b2, b3)
	later = append(later, func() {
		v.putFD(bigFD, typeRegular, int64(len(files.big)), bigMap, 0o644)
		v.writeFile(bigMap, files.big)
	})
	// Sub-blocks: SB (1, r) lie in the second block of .sbc.sf.
	smallMap := v.subBlocks(v.addr(akSB, uc, 5))
	later = append(later, func() {
		v.putFD(smallFD, typeRegular, int64(len(files.small)), smallMap, 0o644)
		v.writeFile(smallMap, files.small)
	})
	subContent := v.dirContent(subFD, fdAddr(0, 0), false, []string{"small"}, []uint32{smallFD})
	nsb := (int64(len(subContent)) + int64(v.sbSize()) - 1) / int64(v.sbSize())
	var subSBs []uint64
	for i := range nsb {
		subSBs = append(subSBs, v.addr(akSB, uc, 1+i))
	}
	subMap := v.subBlocks(subSBs...)
	later = append(later, func() {
		v.putFD(subFD, typeDir, int64(len(subContent)), subMap, 0o755)
		v.writeFile(subMap, subContent)
	})
	rootContent := v.dirContent(fdAddr(0, 0), fdAddr(0, 0), true, []string{"big", "sub"}, []uint32{bigFD, subFD})
	var rootMap tmap
	if l.rootSB {
		var sbs []uint64
		for i := range (int64(len(rootContent)) + int64(v.sbSize()) - 1) / int64(v.sbSize()) {
			sbs = append(sbs, v.addr(akSB, 0, 4+i))
		}
		rootMap = v.subBlocks(sbs...)
	} else {
		rootMap = v.direct(v.block())
	}
	later = append(later, func() {
		v.putFD(fdAddr(0, 0), typeDir, int64(len(rootContent)), rootMap, 0o1755)
		v.writeFile(rootMap, rootContent)
	})
	if v.next > int64(len(v.mem)/tBS) {
		t.Fatalf("volume too small: %d blocks used", v.next)
	}
	for _, f := range later {
		f()
	}
	v.writeFS()
	return v, files
}

// TestResourceLayouts opens volumes whose system files are mapped in every
// way ESXi may map them (§6, §15.1): through PB2 (ZLA 5), through SB or PB
// pointer blocks, over non-contiguous blocks; directories in sub-blocks;
// loops among resource files.
func TestResourceLayouts(t *testing.T) {
	for _, l := range resourceLayouts() {
		t.Run(l.name, func(t *testing.T) {
			tv, files := buildLayout(t, l)
			v, err := tv.open()
			if l.mountErr != "" {
				if err == nil {
					v.Close()
					t.Fatalf("Open succeeded, want an error with %q", l.mountErr)
				}
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), l.mountErr) {
					t.Fatalf("Open: %v\nwant ErrCorrupt with %q", err, l.mountErr)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if v.Info().Local != l.local {
				t.Errorf("Local = %v", v.Info().Local)
			}
			ents, err := v.ReadDir("/")
			if err != nil {
				t.Fatal(err)
			}
			if got := names(ents); got != "big,sub" {
				t.Errorf("ls / = %s", got)
			}
			checkContent(t, v, "big", files.big)
			ents, err = v.ReadDir("sub")
			if l.subErr != "" {
				if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), l.subErr) {
					t.Fatalf("ls sub: %v\nwant ErrCorrupt with %q", err, l.subErr)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := names(ents); got != "small" {
				t.Errorf("ls sub = %s", got)
			}
			checkContent(t, v, "sub/small", files.small)
			// Every system file can be opened by its FD and read whole.
			for _, r := range []uint64{resFBB, resFDC, resPBC, resSBC} {
				f, err := v.OpenFD(fdAddr(0, r))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size())); err != nil {
					t.Errorf("%s: %v", f.Stat().Path, err)
				}
			}
		})
	}
}

func resourceLayouts() []tlayout {
	return []tlayout{
		{name: "vmfs6 minimal", ver: 6},
		// The ESXi 7 layout of issue 12: .sbc.sf through a PB2 pointer
		// block, .fdc.sf over non-contiguous blocks, sub-directories in
		// sub-blocks.
		{name: "vmfs6 esxi7", ver: 6, sbc: "pb2", fdc: "noncontig"},
		{name: "vmfs6 fdc through SB pointer block", ver: 6, fdc: "sbpb", sbc: "pb2"},
		{name: "vmfs6 fdc through PB2", ver: 6, fdc: "pb2", sbc: "noncontig"},
		{name: "vmfs6 pbc and fbb through PB2", ver: 6, pbc: "pb2", fbb: "pb2", sbc: "pb2"},
		{name: "vmfs6 root in sub-blocks", ver: 6, rootSB: true, sbc: "pb2"},
		{name: "vmfs6 root in sub-blocks, sbc through SB pointer block of a direct pb2", ver: 6, rootSB: true, sbc: "noncontig", fdc: "sbpb"},
		{name: "vmfs6 pb2 from FS descriptor", ver: 6, pb2FromFS: true, sbc: "pb2"},
		{name: "vmfs6 local", ver: 6, local: true, sbc: "pb2"},
		{name: "vmfs5 fdc through PB", ver: 5, fdc: "pb", pbc: "pb2"},
		{name: "vmfs5 sbc through PB2, root in sub-blocks", ver: 5, sbc: "pb2", rootSB: true, fdc: "noncontig"},
		{name: "vmfs5 pb2 from FS descriptor", ver: 5, pb2FromFS: true, sbc: "pb2"},
		{name: "vmfs5 local", ver: 5, local: true},
		// Loops: optional files fail when needed, .fdc.sf at mount.
		{name: "vmfs6 sbc through itself", ver: 6, sbc: "self", subErr: ".sbc.sf → .sbc.sf"},
		{name: "vmfs6 pb2 through PB2", ver: 6, pb2: "self", sbc: "pb2", subErr: ".pb2.sf → .pb2.sf"},
		{name: "vmfs6 fdc through a looping sbc", ver: 6, fdc: "sbpb", sbc: "self", mountErr: ".fdc.sf → .sbc.sf → .sbc.sf"},
		{name: "vmfs5 pb2 through PB2", ver: 5, pb2: "self", sbc: "pb2", subErr: ".pb2.sf → .pb2.sf"},
	}
}

// TestResourceLayoutsDissect has dissect.vmfs (an independent reader)
// judge the hand-built layouts: the same listing and file bytes.
func TestResourceLayoutsDissect(t *testing.T) {
	oracle.DissectVMFS(t)
	img := filepath.Join(t.TempDir(), "layout.img")
	if testing.Short() {
		t.Skip("dissect takes about 15 s per volume")
	}
	// Layouts dissect reads too (its fixed opening order pb2 → pbc → fbb →
	// fdc → sbc cannot read .fdc.sf through SB pointer blocks, and it
	// takes .pb2.sf from pb2VolAddr only without DENSE_SBPC).
	judged := map[string]bool{"vmfs6 esxi7": true, "vmfs6 pbc and fbb through PB2": true,
		"vmfs6 root in sub-blocks": true, "vmfs5 fdc through PB": true}
	for _, l := range resourceLayouts() {
		if !judged[l.name] {
			continue
		}
		t.Run(l.name, func(t *testing.T) {
			tv, files := buildLayout(t, l)
			if err := os.WriteFile(img, tv.mem[:tv.next*tBS], 0o644); err != nil {
				t.Fatal(err)
			}
			out, stderr, err := oracle.Dissect(t, "ls", img)
			if err != nil {
				t.Fatalf("dissect-vmfs ls: %v\n%s", err, stderr)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				var e struct {
					Path string `json:"path"`
					Size int64  `json:"size"`
				}
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				got = append(got, fmt.Sprintf("%s:%d", e.Path, e.Size))
			}
			want := fmt.Sprintf("big:%d,sub:%d,sub/small:%d", len(files.big), map[bool]int{true: 0x12000, false: 3 * linEntrySize}[l.ver == 6], len(files.small))
			if strings.Join(got, ",") != want {
				t.Errorf("dissect ls = %v, want %s", got, want)
			}
			for p, content := range map[string][]byte{"big": files.big, "sub/small": files.small} {
				out, stderr, err := oracle.Dissect(t, "cat", img, "--", p)
				if err != nil {
					t.Fatalf("dissect-vmfs cat %s: %v\n%s", p, err, stderr)
				}
				if !bytes.Equal(out, content) {
					t.Errorf("dissect cat %s: %d bytes differ from the %d written", p, len(out), len(content))
				}
			}
		})
	}
}

func names(fis []FileInfo) string {
	var s []string
	for _, fi := range fis {
		s = append(s, fi.Name)
	}
	return strings.Join(s, ",")
}

func checkContent(t *testing.T, v *Volume, p string, want []byte) {
	t.Helper()
	f, err := v.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes differ from the %d written", p, len(got), len(want))
	}
}

// fbbLoc returns the logical offset of .fbb.sf offset off of a built VMFS6
// test volume.
func fbbLoc(t *testing.T, tv *tvol, off int64) int64 {
	t.Helper()
	v, err := tv.open()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	rf := v.rfs[kFBB].rf
	if rf == nil {
		t.Fatal("no .fbb.sf")
	}
	loc, err := rf.ino.contig(off, 0x100, 0)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestFreeVMFS6 counts free space from hand-made .fbb.sf cluster metadata
// (§6.1, §15.1): SFB cluster 0's header nested in the LFB cluster group at
// 0x20000, its metadata block at +md; the LFB bitmap when the SFB cluster
// was never initialised.
func TestFreeVMFS6(t *testing.T) {
	const H, md = 0x2000, 0x1000
	putMeta := func(b []byte, cluster uint64, total, free uint16, bitmap []byte) {
		le.PutUint32(b[cm6Signature:], cm6Magic)
		le.PutUint64(b[cm6ClusterNum:], cluster)
		le.PutUint16(b[cm6Total:], total)
		le.PutUint16(b[cm6Free:], free)
		le.PutUint32(b[0x30:], 1)
		copy(b[cm6Bitmap:], bitmap)
	}
	for _, tc := range []struct {
		name  string
		setup func(tv *tvol, sfb0, lfb0 int64) // logical offsets of the SFB cluster 0 and LFB cluster 0 headers
		want  int64                            // free blocks
		err   error
		msg   string
	}{
		{name: "SFB metadata", want: 17, setup: func(tv *tvol, sfb0, _ int64) {
			putMeta(tv.mem[sfb0+md:], 0, 48, 17, nil)
		}},
		{name: "SFB metadata without a lock block", want: 5, setup: func(tv *tvol, sfb0, _ int64) {
			putMeta(tv.mem[sfb0:], 0, 48, 5, nil)
		}},
		{name: "unsplit free LFB", want: 48, setup: func(tv *tvol, _, lfb0 int64) {
			putMeta(tv.mem[lfb0+md:], 0, 1, 1, []byte{0x01})
		}},
		{name: "unsplit used LFB", want: 0, setup: func(tv *tvol, _, lfb0 int64) {
			putMeta(tv.mem[lfb0+md:], 0, 1, 0, []byte{0x00})
		}},
		{name: "no metadata", err: ErrCorrupt, msg: "dmcr", setup: func(*tvol, int64, int64) {}},
		{name: "wrong cluster number", err: ErrCorrupt, msg: "clusterNum 3", setup: func(tv *tvol, sfb0, _ int64) {
			putMeta(tv.mem[sfb0+md:], 3, 48, 17, nil)
		}},
		{name: "more free than total", err: ErrCorrupt, msg: "49 free of 48", setup: func(tv *tvol, sfb0, _ int64) {
			putMeta(tv.mem[sfb0+md:], 0, 48, 49, nil)
		}},
		{name: "nested LFB header", err: ErrUnsupported, msg: "unsupported", setup: func(tv *tvol, sfb0, lfb0 int64) {
			putMeta(tv.mem[sfb0+md:], 0, 48, 17, nil)
			le.PutUint32(tv.mem[lfb0-0x10000+0x28:], 0x37) // LFB header flags with has-parent
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv, _ := buildLayout(t, tlayout{ver: 6, sbc: "pb2", fbb: "pb2"})
			hdr := fbbLoc(t, tv, 0)
			sfb0 := fbbLoc(t, tv, 0x20000)
			lfb0 := fbbLoc(t, tv, 0x10000)
			if lfb0 != hdr+0x10000 || sfb0 != hdr+0x20000 {
				t.Fatalf(".fbb.sf is not contiguous in this test volume")
			}
			_ = H
			tc.setup(tv, sfb0, lfb0)
			v, err := tv.open()
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			free, err := v.Free()
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("Free = %d, %v; want %v with %q", free, err, tc.err, tc.msg)
				}
				t.Log(err)
				return
			}
			if err != nil || free != tc.want*tBS {
				t.Fatalf("Free = %d, %v; want %d blocks", free, err, tc.want)
			}
		})
	}
	t.Run("no child header", func(t *testing.T) {
		tv, _ := buildLayout(t, tlayout{ver: 6})
		le.PutUint32(tv.mem[fbbLoc(t, tv, 0)+0x34:], 0)
		v, err := tv.open()
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		if _, err := v.Free(); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "unsupported") {
			t.Errorf("Free: %v, want ErrUnsupported", err)
		}
	})
}

// TestHashedDirectoryChains: a link whose hash16 matches may lead to a
// further link group (dissect follows it), the allocation map need not be
// block 0, and entry blocks need not be consecutive.
func TestHashedDirectoryChains(t *testing.T) {
	m := newMemVol(t, 6, 160)
	m.root = &inode{addr: 4}
	coll := collisions(1)
	a, b := coll[0][0], coll[0][1]
	idx := hashIndex(a, false)
	d := newHashedDir(4096, 7)
	// Move the allocation map to block 4: block 0 becomes unused.
	copy(d.block(4), d.block(0))
	clear(d.block(0))
	le.PutUint32(d.b[hdMapBlocks:], 4)
	d.setNibble(4, hdBlockAllocMap)
	d.setNibble(0, 8)
	le.PutUint32(d.b[hdNumEntries:], 2)
	// setNibble writes block 0's map; write the nibbles into block 4.
	nib := func(k int, v byte) {
		mb := d.block(4)
		i := hdBlockHeader + k/2
		if k%2 == 0 {
			mb[i] = mb[i]&0x0F | v<<4
		} else {
			mb[i] = mb[i]&0xF0 | v
		}
	}
	for _, k := range []int{2, 6} {
		bl := d.block(k)
		le.PutUint16(bl[0:], 1)
		le.PutUint16(bl[2:], hdBlockEntries)
		le.PutUint16(bl[4:], 14)
		for i := range 14 {
			bl[hdSlotBitmapOff+i/8] |= 1 << (i % 8)
		}
		nib(k, hdBlockEntries|4)
	}
	d.linkBlock(3)
	nib(3, hdBlockLinks)
	nib(4, hdBlockAllocMap)
	for _, k := range []int{0, 1, 5} {
		nib(k, 8)
	}
	la := d.addEntry(2, 3, a, 0x100004, false)
	lb := d.addEntry(6, 0, b, 0x300004, false)
	// Group 1 holds a's entry and, for b's hash16, a link to group 2,
	// which holds b's entry.
	g2 := d.linkGroup(3, 1, idx, []uint32{lb}, []string{b}, 0)
	g1 := d.linkGroup(3, 0, idx, []uint32{la, g2}, []string{a, b}, 0)
	d.setSlot(idx, g1)
	dir := installDir(t, m, 100, d.b)
	for name, want := range map[string]uint32{a: 0x100004, b: 0x300004} {
		e, err := m.hashLookup(dir, name)
		if err != nil || e.addr != want {
			t.Errorf("lookup %s = %#x, %v; want %#x", name, e.addr, err, want)
		}
	}
	ents, err := m.hashList(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.name)
	}
	if strings.Join(got, ",") != a+","+b {
		t.Errorf("listing %v, want [%s %s]", got, a, b)
	}
	// A location of type 3 is valid-looking but unknown: unsupported.
	d.setSlot(idx, 3|2<<2)
	dir = installDir(t, m, 110, d.b)
	if _, err := m.hashLookup(dir, a); !errors.Is(err, ErrUnsupported) {
		t.Errorf("location type 3: %v, want ErrUnsupported", err)
	}
	// An unknown directory version 0x00Fxxxxx: unsupported; garbage: corrupt.
	for ver, want := range map[uint32]error{0x00F60001: ErrUnsupported, 0x12345678: ErrCorrupt} {
		le.PutUint32(d.b[0:], ver)
		dir = installDir(t, m, 120, d.b)
		m.cache = newLRU(4 << 20)
		if _, err := m.hashList(dir); !errors.Is(err, want) {
			t.Errorf("version %#x: %v, want %v", ver, err, want)
		}
	}
}

// TestUnsupportedStructures: valid-looking structures the reader does not
// handle report ErrUnsupported, say "unsupported" and name the structure.
func TestUnsupportedStructures(t *testing.T) {
	for _, tc := range []struct {
		name, what string
		patch      func(tv *tvol)
		open       bool // the error comes from Open, not from opening "big"
	}{
		{name: "pointer block size", what: "ptrBlockShift", open: true, patch: func(tv *tvol) {
			le.PutUint16(tv.mem[fsDescriptorOff+0x13E:], 17)
		}},
		{name: "unknown ZLA", what: "zeroLevelAddrType", patch: func(tv *tvol) {
			loc := tv.fdc.resLoc(1, 60) + int64(tv.lay.meta)
			le.PutUint32(tv.mem[loc+0x44:], 4)
		}},
		{name: "to-be-zeroed pointer block", what: "pointer block", patch: func(tv *tvol) {
			loc := tv.fdc.resLoc(1, 60)
			le.PutUint32(tv.mem[loc+int64(tv.lay.meta)+0x44:], zlaPB)
			le.PutUint64(tv.mem[loc+int64(tv.lay.ptrs):], tv.fb(40)|1<<7)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv, _ := buildLayout(t, tlayout{ver: 6})
			tc.patch(tv)
			v, err := tv.open()
			if err == nil {
				defer v.Close()
				if tc.open {
					t.Fatal("Open succeeded")
				}
				var f *File
				if f, err = v.Open("big"); err == nil {
					_, err = f.ReadAt(make([]byte, 10), 0)
				}
			}
			if !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "unsupported") || !strings.Contains(err.Error(), tc.what) {
				t.Fatalf("%v\nwant ErrUnsupported naming %s", err, tc.what)
			}
			t.Log(err)
		})
	}
}
