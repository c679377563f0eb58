package vmfs

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// hashedDir builds a VMFS6 directory file: header, allocation map (block
// 0), and the given blocks.
type hashedDir struct {
	md    int
	b     []byte
	table map[uint32]uint32
}

func newHashedDir(md, nblocks int) *hashedDir {
	d := &hashedDir{md: md, b: make([]byte, hdHeaderSize+nblocks*md)}
	le.PutUint32(d.b[0:], hdVersion)
	le.PutUint32(d.b[hdNumMapBlocks:], 1)
	le.PutUint32(d.b[hdMapBlocks:], 0)
	copy(d.b[hdDot+hdEntryNameOff:], ".")
	copy(d.b[hdDotDot+hdEntryNameOff:], "..")
	m := d.block(0)
	le.PutUint16(m[2:], hdBlockAllocMap)
	for i := hdBlockHeader; i < md; i++ {
		m[i] = 0x88
	}
	return d
}

func (d *hashedDir) block(k int) []byte { return d.b[hdHeaderSize+k*d.md : hdHeaderSize+(k+1)*d.md] }

func (d *hashedDir) setNibble(k int, nib byte) {
	m := d.block(0)
	i := hdBlockHeader + k/2
	if k%2 == 0 {
		m[i] = m[i]&0x0F | nib<<4
	} else {
		m[i] = m[i]&0xF0 | nib
	}
}

// entryBlock makes block k an entry block with every slot free.
func (d *hashedDir) entryBlock(k int) {
	b := d.block(k)
	le.PutUint16(b[0:], 1)
	le.PutUint16(b[2:], hdBlockEntries)
	le.PutUint16(b[4:], 14)
	le.PutUint16(b[6:], 14)
	for i := range 14 {
		b[hdSlotBitmapOff+i/8] |= 1 << (i % 8)
	}
	d.setNibble(k, hdBlockEntries|4)
}

func (d *hashedDir) linkBlock(k int) {
	b := d.block(k)
	le.PutUint16(b[0:], 1)
	le.PutUint16(b[2:], hdBlockLinks)
	le.PutUint16(b[4:], 48)
	d.setNibble(k, hdBlockLinks)
}

func loc(typ, block, slot uint32) uint32 { return typ | block<<2 | slot<<24 }

// addEntry writes an entry into slot s of block k and marks it used;
// ghost entries keep their slot marked free.
func (d *hashedDir) addEntry(k, s int, name string, fd uint32, ghost bool) uint32 {
	b := d.block(k)
	e := b[hdBlockHeader+s*hdEntrySize:]
	le.PutUint32(e[0:], typeRegular)
	le.PutUint32(e[4:], fd)
	le.PutUint32(e[12:], uint32(NameHash(name)))
	copy(e[hdEntryNameOff:], name)
	if !ghost {
		b[hdSlotBitmapOff+s/8] &^= 1 << (s % 8)
		le.PutUint32(d.b[hdNumEntries:], le.Uint32(d.b[hdNumEntries:])+1)
	}
	return loc(1, uint32(k), uint32(s))
}

func (d *hashedDir) setSlot(idx, l uint32) { le.PutUint32(d.b[hdHashTable+4*int(idx):], l) }

// linkGroup writes a link group at slot s of block k.
func (d *hashedDir) linkGroup(k, s int, idx uint32, links []uint32, names []string, next uint32) uint32 {
	g := d.block(k)[hdBlockHeader+s*hdLinkSize:]
	le.PutUint16(g[0:], uint16(idx))
	g[2], g[3] = 12, byte(12-len(links))
	for i, l := range links {
		le.PutUint32(g[6+6*i:], l)
		le.PutUint16(g[10+6*i:], uint16(NameHash(names[i])>>16))
	}
	le.PutUint32(g[6+6*12:], next)
	return loc(2, uint32(k), uint32(s))
}

// collisions finds names sharing a non-root hash index.
func collisions(n int) [][]string {
	by := map[uint32][]string{}
	var out [][]string
	for i := 0; len(out) < n; i++ {
		name := fmt.Sprintf("file-%d.vmdk", i)
		idx := hashIndex(name, false)
		by[idx] = append(by[idx], name)
		if len(by[idx]) == 3 {
			out = append(out, by[idx])
		}
	}
	return out
}

// installDir copies a directory file into a VMFS6 memVol at block first
// and returns its inode.
func installDir(t testing.TB, m *memVol, first uint64, content []byte) *inode {
	t.Helper()
	nb := (uint64(len(content)) + memBS - 1) / memBS
	var ptrs []uint64
	for i := range nb {
		ptrs = append(ptrs, m.fb(first+i, false))
	}
	copy(m.mem[first*memBS:], content)
	ino := m.inodeOf(t, typeDir, zlaFB, memBS, uint64(len(content)), ptrs)
	return ino
}

func TestHashedDirectory(t *testing.T) {
	m := newMemVol(t, 6, 160)
	m.root = &inode{addr: 4}
	coll := collisions(2)
	a, b, absent := coll[0][0], coll[0][1], coll[0][2]
	d0, absent2 := coll[1][0], coll[1][1]
	d := newHashedDir(4096, 5)
	le.PutUint32(d.b[hdNumEntries:], 2)
	d.entryBlock(1)
	d.linkBlock(2)
	d.entryBlock(3)
	la := d.addEntry(1, 0, a, 0x100004, false)
	d.addEntry(1, 1, "ghost", 0x200004, true) // a free slot with stale bytes
	lb := d.addEntry(1, 2, b, 0x300004, false)
	ld := d.addEntry(3, 13, d0, 0x400004, false)
	idx := hashIndex(a, false)
	second := d.linkGroup(2, 1, idx, []uint32{lb}, []string{b}, 0)
	first := d.linkGroup(2, 0, idx, []uint32{la}, []string{a}, second)
	d.setSlot(idx, first)
	d.setSlot(hashIndex(d0, false), ld)
	dir := installDir(t, m, 100, d.b)

	for name, want := range map[string]uint32{a: 0x100004, b: 0x300004, d0: 0x400004} {
		e, err := m.hashLookup(dir, name)
		if err != nil || e.addr != want {
			t.Errorf("lookup %s = %#x, %v; want %#x", name, e.addr, err, want)
		}
	}
	for _, name := range []string{absent, absent2, "ghost", "nothing"} {
		if _, err := m.hashLookup(dir, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("lookup %s: %v, want ErrNotFound", name, err)
		}
	}
	ents, err := m.hashList(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.name)
	}
	sort.Strings(names)
	want := []string{a, b, d0}
	sort.Strings(want)
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("listing %v, want %v", names, want)
	}

	// A link group of another hash slot, and a loop of link groups.
	d.linkGroup(2, 0, idx+1, []uint32{la}, []string{a}, second)
	dir = installDir(t, m, 110, d.b)
	if _, err := m.hashLookup(dir, b); !errors.Is(err, ErrCorrupt) {
		t.Errorf("foreign link group: %v", err)
	}
	d.linkGroup(2, 0, idx, nil, nil, first)
	dir = installDir(t, m, 120, d.b)
	if _, err := m.hashLookup(dir, b); !errors.Is(err, ErrCorrupt) {
		t.Errorf("link-group loop: %v", err)
	}
}

func TestLinearDirectory(t *testing.T) {
	m := newMemVol(t, 5, 16)
	var b []byte
	add := func(name string, addr uint32) {
		e := make([]byte, linEntrySize)
		le.PutUint32(e[0:], typeRegular)
		le.PutUint32(e[4:], addr)
		copy(e[linNameOff:], name)
		b = append(b, e...)
	}
	add(".", 4)
	add("..", 4)
	add("a", 0x00400044)
	add("deleted", 0)
	add(strings.Repeat("x", 128), 0x00800044) // a name filling its field
	ino := m.inodeOf(t, typeDir, zlaResident, 0, uint64(len(b)), nil)
	copy(ino.fd.resident, b)
	ents, err := m.list(ino)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 || ents[0].name != "a" || ents[1].name != strings.Repeat("x", 128) {
		t.Errorf("list = %v", ents)
	}
	if e, err := m.lookup(ino, "a"); err != nil || e.addr != 0x00400044 {
		t.Errorf("lookup a = %v, %v", e, err)
	}
	if _, err := m.lookup(ino, "deleted"); !errors.Is(err, ErrNotFound) {
		t.Errorf("lookup deleted: %v", err)
	}
}

// TestCorruptMaps checks that bad addresses, loops and absurd sizes end in
// ErrCorrupt, not in a panic or a hang.
func TestCorruptMaps(t *testing.T) {
	m := newMemVol(t, 5, 32)
	m.setRes(kSBC, m.addRes(t, ".sbc.sf", 1, 2, resHeader{rpc: 32, cpg: 1, resSize: 8 << 10, cgSize: 0x400 + 32*8<<10}))
	m.setRes(kPBC, m.addRes(t, ".pbc.sf", 3, 1, resHeader{rpc: 8, cpg: 1, resSize: 4 << 10, cgSize: 0x400 + 8*4<<10}))
	for _, tc := range []struct {
		name string
		zla  uint32
		bs   uint64
		ptrs []uint64
	}{
		{"FB beyond the volume", zlaFB, memBS, []uint64{m.fb(1000, false)}},
		{"FD address as data", zlaFB, memBS, []uint64{0x44}},
		{"type-0 garbage", zlaFB, memBS, []uint64{0x40}},
		{"SB cluster out of range", zlaSB, 8 << 10, []uint64{m.res(akSB, 5000, 1)}},
		{"SB resource out of range", zlaSB, 8 << 10, []uint64{m.res(akSB, 0, 40)}},
		{"PB out of range", zlaPB, memBS, []uint64{m.res(akPB, 7, 1)}},
		{"PB as data", zlaFB, memBS, []uint64{m.res(akPB, 0, 1)}},
		{"PB2 without .pb2.sf", zlaPB2, memBS, []uint64{m.res(akPB2, 0, 1)}},
		{"file block larger than a sub-block", zlaSB, memBS, []uint64{m.res(akSB, 0, 1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ino := m.inodeOf(t, typeRegular, tc.zla, tc.bs, tc.bs, tc.ptrs)
			f := &File{v: m.Volume, ino: ino}
			_, err := f.ReadAt(make([]byte, 10), 0)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("ReadAt: %v, want ErrCorrupt", err)
			}
			if _, err := f.Extent(0); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Extent: %v, want ErrCorrupt", err)
			}
			t.Log(err)
		})
	}
	t.Run("resource file through itself", func(t *testing.T) {
		// .sbc.sf whose only block is one of its own sub-blocks.
		loop := m.inodeOf(t, typeSysFile, zlaSB, 8<<10, 0x10000, []uint64{m.res(akSB, 0, 0)})
		m.setRes(kSBC, &resFile{name: ".sbc.sf", ino: loop, h: resHeader{rpc: 4, cpg: 1, resSize: 8 << 10, cgSize: 0x400 + 4*8<<10}, hdr: 0x400})
		ino := m.inodeOf(t, typeRegular, zlaSB, 8<<10, 100, []uint64{m.res(akSB, 0, 0)})
		_, err := (&File{v: m.Volume, ino: ino}).ReadAt(make([]byte, 10), 0)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "loop") {
			t.Errorf("ReadAt: %v", err)
		}
	})
	t.Run("absurd sizes", func(t *testing.T) {
		for _, fd := range []*fdesc{
			{zla: zlaFB, blockSize: memBS, size: 257 * memBS, ptrs: make([]uint64, 256)},
			{zla: zlaPB, blockSize: memBS, size: 1 << 63, ptrs: make([]uint64, 256)},
			{zla: zlaFB, blockSize: 3000, size: 1, ptrs: make([]uint64, 256)},
			{zla: zlaResident, size: 2000, resident: make([]byte, 1024)},
			{zla: 77, size: 1},
		} {
			if _, err := m.newInode(fd, 4, "x"); err == nil {
				t.Errorf("%+v accepted", fd)
			}
		}
	})
}

func TestRDM(t *testing.T) {
	m := newMemVol(t, 5, 4)
	fd := &fdesc{addr: 0x44, typ: typeRDM, size: 1 << 40, ptrs: make([]uint64, 256)}
	ino, err := m.newInode(fd, fd.addr, "rdm")
	if err != nil {
		t.Fatal(err)
	}
	f := &File{v: m.Volume, ino: ino, info: m.fileInfo(ino, "rdm")}
	if f.Size() != 1<<40 || f.Stat().Type != TypeRDM {
		t.Errorf("size %d type %s", f.Size(), f.Stat().Type)
	}
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrNoData) {
		t.Errorf("ReadAt: %v", err)
	}
	if _, err := f.Extent(0); !errors.Is(err, ErrNoData) {
		t.Errorf("Extent: %v", err)
	}
	if n, err := f.Allocated(); n != 0 || err != nil {
		t.Errorf("Allocated = %d, %v", n, err)
	}
}
