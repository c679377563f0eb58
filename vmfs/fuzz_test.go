package vmfs

import (
	"io"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Fuzz targets for every parser; `go test` replays the seeds (and
// testdata/fuzz when present). Each reads everything the parser opens.

// seedLVM is a valid LVM5 device header region (devMeta, volume
// descriptor, PE bitmap and entry), relative to 1 MiB.
func seedLVM(major uint32) []byte {
	H := 0x200
	if major == 6 {
		H = 0x1000
	}
	bms := 0x400
	if major == 6 {
		bms = 0x1000
	}
	b := make([]byte, H+peMapRel+bms+peEntrySize)
	le.PutUint32(b[0:], lvmMagic)
	le.PutUint32(b[4:], major)
	le.PutUint32(b[8:], 21)
	le.PutUint32(b[0x5A:], 512)
	le.PutUint64(b[0x5E:], 0x11100000)
	le.PutUint32(b[0x66:], 1)
	le.PutUint32(b[0x6A:], 1)
	le.PutUint64(b[0x7A:], 0x1100000)
	b[0x82] = 1
	le.PutUint32(b[0xBE:], 1)
	if major == 6 {
		le.PutUint32(b[0xCA:], 0x1000)
	}
	v := b[H:]
	le.PutUint64(v[0:], 256<<20)
	le.PutUint32(v[0x10:], 1)
	v[0x54] = 7
	le.PutUint32(v[0x64:], 1)
	le.PutUint32(v[0x90:], 1)
	b[H+peMapRel] = 1
	pe := b[H+peMapRel+bms:]
	pe[0] = 1
	le.PutUint64(pe[0x09:], 0x1100000)
	le.PutUint64(pe[0x19:], 256<<20)
	le.PutUint32(pe[0x21:], 1)
	return b
}

// sparseDev is a device of a given size that holds data at off and zeros
// elsewhere, without allocating the zeros.
type sparseDev struct {
	data []byte
	off  int64
	size int64
}

func (s *sparseDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), s.size-off)
	clear(p[:n])
	if lo, hi := max(off, s.off), min(off+n, s.off+int64(len(s.data))); lo < hi {
		copy(p[lo-off:hi-off], s.data[lo-s.off:hi-s.off])
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func FuzzLVMHeader(f *testing.F) {
	f.Add(seedLVM(5))
	f.Add(seedLVM(6))
	f.Add(seedLVM(3)[:0x200])
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4<<20 {
			return
		}
		parseDevMeta(b)
		parseVolDesc(b)
		parsePE(b)
		d := &Device{Name: "fuzz", R: &sparseDev{data: b, off: lvmHeaderOffset, size: 0x11100000}, Size: 0x11100000}
		ld, err := readLVM(d, 0, 0)
		if err != nil {
			return
		}
		lv, _, err := assemble([]*lvmDev{ld}, true)
		if err != nil {
			return
		}
		p := make([]byte, 4096)
		lv.readAt(p, 0, "fuzz")
		lv.readAt(p, lv.size-4096, "fuzz")
	})
}

func seedFSDesc(major uint32) []byte {
	b := make([]byte, fsDescLen)
	le.PutUint32(b[0:], fsMagic)
	le.PutUint32(b[4:], major)
	le.PutUint32(b[0x19:], 6)
	copy(b[0x1D:], "label")
	le.PutUint64(b[0xA1:], 1<<20)
	le.PutUint32(b[0xD1:], 0x10000)
	le.PutUint32(b[0xD5:], 64)
	le.PutUint32(b[0xD9:], 8<<10)
	if major >= 24 {
		le.PutUint32(b[0xD9:], 64<<10)
		le.PutUint32(b[0x134:], 0x1000)
		le.PutUint16(b[0x138:], 9)
	}
	return b
}

func FuzzFSDescriptor(f *testing.F) {
	f.Add(seedFSDesc(14))
	f.Add(seedFSDesc(24))
	f.Add(seedFSDesc(4))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := parseFSDesc(b)
		if err != nil {
			return
		}
		v := &Volume{lv: &lvol{size: 1 << 40}, cache: newLRU(1 << 20)}
		v.setGeometry(fs)
		if v.ppb <= 0 || v.fdcStart <= 0 || v.lay.size <= 0 || v.lay.ptrs+v.lay.numPtrs*v.lay.ptrBytes > v.lay.size {
			t.Fatalf("geometry %+v from %+v", v, fs)
		}
	})
}

// fuzzVol is a small VMFS5 or VMFS6 memVol with .sbc.sf, .pbc.sf and
// .pb2.sf, whose blocks 40.. hold fuzz data.
func fuzzVol(t testing.TB, ver int, data []byte) *memVol {
	m := newMemVol(t, ver, 64)
	if ver == 6 {
		m.setRes(kSBC, m.addRes(t, ".sbc.sf", 1, 9, resHeader{rpc: 8, cpg: 1, resSize: 64 << 10, cgSize: uint32(m.clusterHdr) + 8*64<<10}))
		m.setRes(kPB2, m.addRes(t, ".pb2.sf", 12, 9, resHeader{rpc: 8, cpg: 1, resSize: 64 << 10, cgSize: uint32(m.clusterHdr) + 8*64<<10}))
	} else {
		m.setRes(kSBC, m.addRes(t, ".sbc.sf", 1, 9, resHeader{rpc: 32, cpg: 2, resSize: 8 << 10, cgSize: 2*0x400 + 2*32*8<<10}))
		m.setRes(kPBC, m.addRes(t, ".pbc.sf", 10, 2, resHeader{rpc: 16, cpg: 1, resSize: 4 << 10, cgSize: 0x400 + 16*4<<10}))
		m.setRes(kPB2, m.addRes(t, ".pb2.sf", 12, 2, resHeader{rpc: 16, cpg: 1, resSize: 4 << 10, cgSize: 0x400 + 16*4<<10}))
	}
	copy(m.mem[1*memBS:], data)
	return m
}

// walkFile reads a file's extents and samples of its data, bounded.
func walkFile(f *File) {
	size := f.Size()
	steps := 0
	for off := int64(0); off < size && steps < 4096; steps++ {
		e, err := f.Extent(off)
		if err != nil || e.Len <= 0 || e.Off != off {
			break
		}
		off = e.End()
	}
	p := make([]byte, 70000)
	for _, off := range []int64{0, size / 2, size - 1000} {
		if off >= 0 {
			f.ReadAt(p, off)
		}
	}
	formats.Walk(f, 0, min(size, 1<<16), func(formats.Extent) error { return nil })
}

func FuzzFD(f *testing.F) {
	for _, ver := range []int{5, 6} {
		m := newMemVol(f, ver, 1)
		b := make([]byte, m.lay.size)
		meta := b[m.lay.meta:]
		le.PutUint32(meta[0x00:], 4)
		le.PutUint32(meta[0x0C:], typeRegular)
		le.PutUint64(meta[0x14:], 3*memBS+5)
		le.PutUint64(meta[0x1C:], memBS)
		le.PutUint32(meta[0x44:], zlaFB)
		for i := range 3 {
			a := m.fb(uint64(40+i), i == 1)
			if ver == 6 {
				le.PutUint64(b[m.lay.ptrs+8*i:], a)
			} else {
				le.PutUint32(b[m.lay.ptrs+4*i:], uint32(a))
			}
		}
		f.Add(uint8(ver), b)
	}
	f.Fuzz(func(t *testing.T, ver uint8, b []byte) {
		v := 5
		if ver%2 == 0 {
			v = 6
		}
		m := fuzzVol(t, v, nil)
		fd, err := parseFD(b, m.lay)
		if err != nil {
			return
		}
		ino, err := m.newInode(fd, 4, "fuzz")
		if err != nil {
			return
		}
		walkFile(&File{v: m.Volume, ino: ino})
	})
}

// FuzzAddressMap walks files of every ZLA whose pointer blocks and
// sub-blocks are fuzz data.
func FuzzAddressMap(f *testing.F) {
	for _, ver := range []uint8{5, 6} {
		m := fuzzVol(f, int(ver), nil)
		var b []byte
		for i, a := range []uint64{m.fb(40, false), m.fb(41, true), 0, m.fb(43, false)} {
			if ver == 6 {
				b = le.AppendUint64(b, a)
			} else {
				b = le.AppendUint32(b, uint32(a))
			}
			_ = i
		}
		f.Add(ver, uint16(zlaPB), b)
		f.Add(ver, uint16(zlaDouble), b)
		f.Add(ver, uint16(zlaSB), b)
		f.Add(ver, uint16(zlaPB2), b)
	}
	f.Fuzz(func(t *testing.T, ver uint8, zla uint16, data []byte) {
		if len(data) > 4*memBS {
			return
		}
		v := 5
		if ver%2 == 0 {
			v = 6
		}
		m := fuzzVol(t, v, nil)
		P := m.ppb
		pt, pr := uint64(akPB), m.rfs[kPBC].rf
		if v == 6 {
			pt, pr = akSB, m.rfs[kSBC].rf
		}
		// The fuzz data fills the pointer blocks from (0, 1) on, and the
		// sub-blocks and PB2 blocks likewise.
		for _, rf := range []*resFile{pr, m.rfs[kSBC].rf, m.rfs[kPB2].rf} {
			loc := m.resLoc(t, rf, 0, 1)
			copy(m.mem[loc:min(int64(len(m.mem)), loc+rf.ino.size())], data)
		}
		z := uint32(zla)
		if z == zlaDouble&0xFFFF {
			z = zlaDouble
		}
		var ptrs []uint64
		var bs uint64 = memBS
		var size uint64
		switch z {
		case zlaPB, zlaDouble:
			ptrs = []uint64{m.res(pt, 0, 1), m.res(pt, 0, 2)}
			size = uint64(2*P) * memBS
			if z == zlaDouble {
				size *= uint64(P)
			}
		case zlaPB2:
			ptrs = []uint64{m.res(akPB2, 0, 1)}
			size = uint64(P) * memBS
		case zlaSB:
			bs = uint64(m.rfs[kSBC].rf.h.resSize)
			ptrs = []uint64{m.res(akSB, 0, 1), m.res(akSB, 0, 2)}
			size = 2 * bs
		default:
			return
		}
		fd := &fdesc{addr: 4, typ: typeRegular, zla: z, blockSize: bs, size: size, ptrs: make([]uint64, m.lay.numPtrs)}
		copy(fd.ptrs, ptrs)
		ino, err := m.newInode(fd, 4, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		walkFile(&File{v: m.Volume, ino: ino})
	})
}

func FuzzLinearDirectory(f *testing.F) {
	var seed []byte
	for _, name := range []string{".", "..", "a", "b"} {
		e := make([]byte, linEntrySize)
		le.PutUint32(e[0:], typeRegular)
		le.PutUint32(e[4:], 0x44)
		copy(e[linNameOff:], name)
		seed = append(seed, e...)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		m := newMemVol(t, 5, 1)
		if len(b) > m.lay.resLen {
			b = b[:m.lay.resLen]
		}
		ino := m.inodeOf(t, typeDir, zlaResident, 0, uint64(len(b)), nil)
		copy(ino.fd.resident, b)
		m.list(ino)
		m.lookup(ino, "a")
	})
}

func FuzzHashedDirectory(f *testing.F) {
	d := newHashedDir(4096, 2)
	le.PutUint32(d.b[hdNumEntries:], 2)
	d.entryBlock(1)
	d.setSlot(hashIndex("a", false), d.addEntry(1, 0, "a", 0x44, false))
	f.Add(d.b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 40*memBS {
			return
		}
		m := newMemVol(t, 6, 48)
		m.root = &inode{addr: 4}
		if len(b) < hdHeaderSize {
			b = append(b, make([]byte, hdHeaderSize-len(b))...)
		}
		dir := installDir(t, m, 2, b)
		m.hashList(dir)
		for _, name := range []string{"a", "b", "..", "file-1.vmdk"} {
			m.hashLookup(dir, name)
		}
	})
}
