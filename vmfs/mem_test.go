package vmfs

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// memVol is a hand-built volume in memory for unit tests: the logical volume
// is mem, file blocks are 64 KiB, resource files are laid out by addRes and
// files are made from FDs built in Go, bypassing the FDC.
type memVol struct {
	*Volume
	mem    []byte
	cnt    *countingReader
	nextFD uint64
}

const memBS = 64 << 10

func newMemVol(t testing.TB, ver int, blocks int) *memVol {
	mem := make([]byte, blocks*memBS)
	cnt := &countingReader{r: bytes.NewReader(mem)}
	d := &Device{Name: "mem", R: cnt, Size: int64(len(mem))}
	v := &Volume{lv: &lvol{size: d.Size, segs: []segment{{lOff: 0, len: d.Size, dev: d}}}, cache: newLRU(4 << 20)}
	f := fsDesc{major: 14, fileBlockSize: memBS, subBlockSize: 8 << 10, config: configDenseSBPC, fdcClustersPerGroup: 1}
	if ver == 6 {
		f = fsDesc{major: 24, fileBlockSize: memBS, subBlockSize: 64 << 10, mdAlignment: 4096, sfbToLfbShift: 2, fdcClustersPerGroup: 1}
	} else if ver == 3 {
		f.major, f.config = 4, 0
	}
	v.setGeometry(f)
	for k := range v.rfs {
		v.rfs[k].state = slotDone // no resource files until setRes
	}
	return &memVol{Volume: v, mem: mem, cnt: cnt}
}

// setRes installs resource file rf of kind k.
func (m *memVol) setRes(k resKind, rf *resFile) {
	m.rfs[k] = resSlot{state: slotDone, rf: rf}
	if k == kFDC {
		m.fdc = rf
	}
}

// fb returns the data address of file block n (FB, or SFB on VMFS6).
func (m *memVol) fb(n uint64, tbz bool) uint64 {
	if m.af.wide {
		a := 1 | (n/m.sfbRPC)<<15 | (n%m.sfbRPC)<<51
		if tbz {
			a |= 0x3 << 7
		}
		return a
	}
	a := 1 | n<<6
	if tbz {
		a |= 0x20
	}
	return a
}

// res returns an SB/PB/PB2 address (type t) of (cluster, resource).
func (m *memVol) res(t, c, r uint64) uint64 {
	if m.af.wide {
		return t | c<<6 | r<<56
	}
	a := t | c<<6 | (r&15)<<28
	if t == akSB {
		a |= ((r >> 4) & 3) << 3
	}
	return a
}

// inodeOf builds an inode over a hand-made FD.
func (m *memVol) inodeOf(t testing.TB, typ uint32, zla uint32, bs uint64, size uint64, ptrs []uint64) *inode {
	t.Helper()
	m.nextFD++
	fd := &fdesc{addr: fdAddr(m.nextFD, 0), typ: typ, zla: zla, blockSize: bs, size: size}
	if zla == zlaResident {
		fd.resident = make([]byte, m.lay.resLen)
	} else {
		fd.ptrs = make([]uint64, m.lay.numPtrs)
		copy(fd.ptrs, ptrs)
	}
	ino, err := m.newInode(fd, fd.addr, "test")
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// addRes makes a resource file of nblocks blocks from block first, with
// header h (the header lives in the file, at offset 0).
func (m *memVol) addRes(t testing.TB, name string, first, nblocks uint64, h resHeader) *resFile {
	var ptrs []uint64
	for i := range nblocks {
		ptrs = append(ptrs, m.fb(first+i, false))
	}
	ino := m.inodeOf(t, typeSysFile, zlaFB, memBS, nblocks*memBS, ptrs)
	ino.path = name
	rf := &resFile{name: name, ino: ino, h: h, hdr: m.clusterHdr}
	if err := rf.check(0); err != nil {
		t.Fatal(err)
	}
	return rf
}

// resLoc returns the logical offset of resource (c, r) of rf.
func (m *memVol) resLoc(t testing.TB, rf *resFile, c, r uint64) int64 {
	t.Helper()
	off, err := rf.offset(c, r)
	if err != nil {
		t.Fatal(err)
	}
	loc, err := rf.ino.contig(off, int64(rf.h.resSize), 0)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// putPtrs writes a pointer block at logical loc.
func (m *memVol) putPtrs(loc int64, entries map[int]uint64) {
	for i, a := range entries {
		if m.af.wide {
			le.PutUint64(m.mem[loc+int64(8*i):], a)
		} else {
			le.PutUint32(m.mem[loc+int64(4*i):], uint32(a))
		}
	}
}

// fillBlocks gives every block a distinct pattern.
func (m *memVol) fillBlocks() {
	for i := range m.mem {
		m.mem[i] = byte(i/memBS*7 + i%251)
	}
}

// expect is the model of one file: per file block, its kind and logical
// offset.
type expBlock struct {
	kind formats.Kind
	loc  int64
}

func checkFile(t *testing.T, m *memVol, ino *inode, model map[int64]expBlock) {
	t.Helper()
	f := &File{v: m.Volume, ino: ino, info: m.fileInfo(ino, "test")}
	kindOf := func(blk int64) expBlock {
		e := model[blk]
		if e.kind == 0 {
			e.kind = formats.Hole
		}
		return e
	}
	// wantAt returns the expected bytes [off, off+n).
	wantAt := func(off, n int64) []byte {
		w := make([]byte, n)
		for pos := off; pos < off+n; {
			blk := pos / ino.bs
			end := min((blk+1)*ino.bs, off+n)
			if e := kindOf(blk); e.kind == formats.Data {
				copy(w[pos-off:end-off], m.mem[e.loc+pos-blk*ino.bs:])
			}
			pos = end
		}
		return w
	}
	var wantExt []formats.Extent
	for blk := int64(0); blk < ino.nblocks; blk++ {
		e := kindOf(blk)
		off := blk * ino.bs
		n := min(ino.bs, ino.size()-off)
		if k := len(wantExt) - 1; k >= 0 && wantExt[k].Kind == e.kind {
			wantExt[k].Len += n
		} else {
			wantExt = append(wantExt, formats.Extent{Off: off, Len: n, Kind: e.kind})
		}
	}
	const chunk = 8 << 20
	for off := int64(0); off < ino.size(); off += chunk {
		n := min(chunk, ino.size()-off)
		got := make([]byte, n)
		if k, err := f.ReadAt(got, off); k != int(n) || (err != nil) {
			t.Fatalf("ReadAt = %d, %v", k, err)
		}
		if want := wantAt(off, n); !bytes.Equal(got, want) {
			i := 0
			for got[i] == want[i] {
				i++
			}
			t.Fatalf("content differs at byte %d (block %d)", off+int64(i), (off+int64(i))/ino.bs)
		}
	}
	ext, err := formats.Extents(f)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ext) != fmt.Sprint(wantExt) {
		t.Errorf("extents\n got %v\nwant %v", ext, wantExt)
	}
	// Odd-sized reads everywhere.
	step := max(12345, ino.size()/300|1)
	for off := int64(0); off < ino.size(); off += step {
		n := min(int64(40000), ino.size()-off)
		b := make([]byte, n)
		if k, err := f.ReadAt(b, off); k != int(n) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, k, err)
		}
		if !bytes.Equal(b, wantAt(off, n)) {
			t.Fatalf("ReadAt(%d, %d) differs", n, off)
		}
	}
}

// TestAddressForms maps files of every ZLA and address type on hand-built
// VMFS3, VMFS5 and VMFS6 volumes: FB/SFB with holes and TBZ, dense SBs, PB,
// PB2, double indirection, VMFS6 SB pointer blocks and LFBs.
func TestAddressForms(t *testing.T) {
	for _, ver := range []int{3, 5, 6} {
		t.Run(fmt.Sprintf("vmfs%d", ver), func(t *testing.T) {
			m := newMemVol(t, ver, 160)
			m.fillBlocks()
			P := m.ppb
			B := int64(memBS)
			// Resource files: .sbc.sf at blocks 1-9, .pbc.sf 10-11, .pb2.sf 12-20.
			if ver == 6 {
				m.setRes(kSBC, m.addRes(t, ".sbc.sf", 1, 9, resHeader{rpc: 8, cpg: 1, resSize: 64 << 10, cgSize: uint32(m.clusterHdr) + 8*64<<10}))
				m.setRes(kPB2, m.addRes(t, ".pb2.sf", 12, 9, resHeader{rpc: 8, cpg: 1, resSize: 64 << 10, cgSize: uint32(m.clusterHdr) + 8*64<<10}))
			} else {
				m.setRes(kSBC, m.addRes(t, ".sbc.sf", 1, 9, resHeader{rpc: 32, cpg: 2, resSize: 8 << 10, cgSize: 2*0x400 + 2*32*8<<10}))
				m.setRes(kPBC, m.addRes(t, ".pbc.sf", 10, 2, resHeader{rpc: 16, cpg: 1, resSize: 4 << 10, cgSize: 0x400 + 16*4<<10}))
				m.setRes(kPB2, m.addRes(t, ".pb2.sf", 12, 2, resHeader{rpc: 16, cpg: 1, resSize: 4 << 10, cgSize: 0x400 + 16*4<<10}))
			}
			ptrType := uint64(akPB)
			ptrRes := m.rfs[kPBC].rf
			if ver == 6 {
				ptrType, ptrRes = akSB, m.rfs[kSBC].rf
			}
			// Pointer blocks must not overlap the data blocks used below
			// (40+); clear them first.
			for _, rf := range []*resFile{m.rfs[kSBC].rf, m.rfs[kPBC].rf, m.rfs[kPB2].rf} {
				if rf != nil {
					loc, _ := rf.ino.contig(0, rf.ino.size(), 0)
					clear(m.mem[loc : loc+rf.ino.size()])
				}
			}

			t.Run("direct", func(t *testing.T) {
				ptrs := []uint64{m.fb(40, false), m.fb(41, false), 0, m.fb(43, true), m.fb(44, false), m.fb(50, false), m.fb(45, true)}
				ino := m.inodeOf(t, typeRegular, zlaFB, memBS, uint64(7*B-100), ptrs)
				checkFile(t, m, ino, map[int64]expBlock{
					0: {formats.Data, 40 * B}, 1: {formats.Data, 41 * B}, 3: {formats.Zero, 0},
					4: {formats.Data, 44 * B}, 5: {formats.Data, 50 * B}, 6: {formats.Zero, 0},
				})
				// Blocks 40 and 41 are contiguous: one device read; the
				// TBZ block none.
				f := &File{v: m.Volume, ino: ino}
				before := m.cnt.count()
				f.ReadAt(make([]byte, 2*B), 0)
				if d := m.cnt.count() - before; d != 1 {
					t.Errorf("two contiguous blocks: %d device reads", d)
				}
				before = m.cnt.count()
				f.ReadAt(make([]byte, 2*B), 2*B)
				if d := m.cnt.count() - before; d != 0 {
					t.Errorf("hole + TBZ block: %d device reads", d)
				}
			})
			t.Run("subblocks", func(t *testing.T) {
				sbs := int64(m.rfs[kSBC].rf.h.resSize)
				r := uint64(17) // dense resource bits on VMFS5
				if ver == 3 {
					r = 9
				}
				if ver == 6 {
					r = 5
				}
				c := uint64(1)
				if ver == 6 {
					c = 0
				}
				a1, a2 := m.res(akSB, c, r), m.res(akSB, 0, 3)
				ino := m.inodeOf(t, typeRegular, zlaSB, uint64(sbs), uint64(2*sbs+100), []uint64{a1, 0, a2})
				checkFile(t, m, ino, map[int64]expBlock{
					0: {formats.Data, m.resLoc(t, m.rfs[kSBC].rf, c, r)}, 2: {formats.Data, m.resLoc(t, m.rfs[kSBC].rf, 0, 3)},
				})
			})
			t.Run("single", func(t *testing.T) {
				pb1, pb2 := m.res(ptrType, 0, 1), m.res(ptrType, 0, 2)
				m.putPtrs(m.resLoc(t, ptrRes, 0, 1), map[int]uint64{0: m.fb(60, false), 1: m.fb(61, false), 3: m.fb(62, true)})
				m.putPtrs(m.resLoc(t, ptrRes, 0, 2), map[int]uint64{5: m.fb(63, false)})
				ino := m.inodeOf(t, typeRegular, zlaPB, memBS, uint64((2*P+6)*B-1), []uint64{pb1, 0, pb2})
				checkFile(t, m, ino, map[int64]expBlock{
					0: {formats.Data, 60 * B}, 1: {formats.Data, 61 * B}, 3: {formats.Zero, 0}, 2*P + 5: {formats.Data, 63 * B},
				})
			})
			if ver == 3 {
				return
			}
			t.Run("pb2", func(t *testing.T) {
				p := m.res(akPB2, 0, 3)
				m.putPtrs(m.resLoc(t, m.rfs[kPB2].rf, 0, 3), map[int]uint64{1: m.fb(70, false), 2: m.fb(71, false)})
				ino := m.inodeOf(t, typeRegular, zlaPB2, memBS, uint64(3*B), []uint64{p})
				checkFile(t, m, ino, map[int64]expBlock{1: {formats.Data, 70 * B}, 2: {formats.Data, 71 * B}})
			})
			t.Run("double", func(t *testing.T) {
				top, l1, l2 := m.res(ptrType, 0, 3), m.res(ptrType, 0, 4), m.res(ptrType, 0, 5)
				m.putPtrs(m.resLoc(t, ptrRes, 0, 3), map[int]uint64{0: l1, 2: l2})
				m.putPtrs(m.resLoc(t, ptrRes, 0, 4), map[int]uint64{0: m.fb(80, false), 1: m.fb(81, false)})
				m.putPtrs(m.resLoc(t, ptrRes, 0, 5), map[int]uint64{7: m.fb(82, false)})
				ino := m.inodeOf(t, typeRegular, zlaDouble, memBS, uint64((2*P+8)*B), []uint64{top})
				checkFile(t, m, ino, map[int64]expBlock{0: {formats.Data, 80 * B}, 1: {formats.Data, 81 * B}, 2*P + 7: {formats.Data, 82 * B}})
			})
			t.Run("resident", func(t *testing.T) {
				ino := m.inodeOf(t, typeRegular, zlaResident, 0, 100, nil)
				copy(ino.fd.resident, "resident data")
				f := &File{v: m.Volume, ino: ino}
				b := make([]byte, 200)
				n, err := f.ReadAt(b, 0)
				if n != 100 || err == nil || string(b[:13]) != "resident data" {
					t.Errorf("ReadAt = %d, %v, %q", n, err, b[:13])
				}
			})
			if ver != 6 {
				return
			}
			t.Run("lfb", func(t *testing.T) {
				// LFB = 4 SFBs here (sfbToLfbShift 2); LFB 24 = SFB 96.
				lfb := func(n uint64, tbz bool) uint64 {
					a := akLFB | n<<15
					if tbz {
						a |= 1 << 7
					}
					return a
				}
				ino := m.inodeOf(t, typeRegular, zlaFB, 4*memBS, uint64(9*B), []uint64{lfb(24, false), lfb(25, true), lfb(36, false)})
				checkFile(t, m, ino, map[int64]expBlock{0: {formats.Data, 96 * B}, 1: {formats.Zero, 0}, 2: {formats.Data, 144 * B}})
			})
		})
	}
}

func TestAddressDecoding(t *testing.T) {
	// Examples of §5.1 and §5.2 (real volumes).
	if b := fbBlock(0x141); b != 5 {
		t.Errorf("FB 0x141 = block %d", b)
	}
	v5 := addrFormat{dense: true}
	if b := fbBlock(0x96E1); b != 603 || !v5.tbz(0x96E1) {
		t.Errorf("FB 0x96E1 = block %d tbz %v", b, v5.tbz(0x96E1))
	}
	if c, r := v5.clusterRes(0x782); c != 30 || r != 0 {
		t.Errorf("SB 0x782 = (%d, %d)", c, r)
	}
	if c, r := v5.clusterRes(0x1000000A); c != 0 || r != 17 {
		t.Errorf("dense SB 0x1000000A = (%d, %d)", c, r)
	}
	if c, r := (addrFormat{}).clusterRes(0x1000000A); c != 0 || r != 1 {
		t.Errorf("non-dense SB 0x1000000A = (%d, %d)", c, r)
	}
	if c, r := fdClusterRes(0x00400184); c != 6 || r != 1 {
		t.Errorf("FD 0x00400184 = (%d, %d)", c, r)
	}
	if a := fdAddr(0, 9); a != 0x02400004 {
		t.Errorf("fdAddr(0, 9) = %#x", a)
	}
	v6 := addrFormat{wide: true}
	for _, tc := range []struct {
		a        uint64
		cl, res  uint64
		block    uint64 // with 512 SFBs per cluster
		sbc, sbr uint64
	}{
		{a: 0x0040000000000001, block: 8},
		{a: 0x0E58000000000001, block: 459},
	} {
		c, r := sfbClusterRes(tc.a)
		if c*512+r != tc.block {
			t.Errorf("SFB %#x = block %d, want %d", tc.a, c*512+r, tc.block)
		}
	}
	if c, r := v6.clusterRes(0x0100000000000002); c != 0 || r != 1 {
		t.Errorf("VMFS6 SB 0x0100000000000002 = (%d, %d)", c, r)
	}
	if c, r := v6.clusterRes(0x5); c != 0 || r != 0 {
		t.Errorf("PB2 5 = (%d, %d)", c, r)
	}
	if v6.tbz(0x0040000000000001) || !v6.tbz(0x0040000000000001|1<<9) {
		t.Error("VMFS6 TBZ bitmap")
	}
}

func TestResourceOffset(t *testing.T) {
	// The VMFS5 .fdc.sf of §13.2: root FD (cluster 0, resource 0) at file
	// offset 0x20000 (+ FDC start 4 MiB = logical 0x420000).
	ino := &inode{fd: &fdesc{size: 0x10000 + 0x410000}}
	rf := &resFile{name: ".fdc.sf", ino: ino, hdr: 0x400, h: resHeader{rpc: 32, cpg: 64, cgOffset: 0x10000, resSize: 0x800, cgSize: 0x410000}}
	for _, tc := range []struct {
		c, r uint64
		off  int64
		ok   bool
	}{
		{0, 0, 0x20000, true},
		{0, 2, 0x21000, true},
		{6, 1, 0x20000 + 6*32*0x800 + 0x800, true},
		{0, 32, 0, false}, // resource out of range
		{64, 0, 0, false}, // second group does not exist
		{1 << 35, 0, 0, false},
	} {
		off, err := rf.offset(tc.c, tc.r)
		if (err == nil) != tc.ok || (tc.ok && off != tc.off) {
			t.Errorf("offset(%d, %d) = %#x, %v; want %#x ok=%v", tc.c, tc.r, off, err, tc.off, tc.ok)
		}
	}
}
