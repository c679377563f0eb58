package testimages

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The ESXi layout reproduces what vmfs-format.md §6 and §15.1 record of
// the real ESXi 7 VMFS6 volume; these checks read the written image at the
// documented offsets.
func TestESXiLayoutVMFS6(t *testing.T) {
	out := filepath.Join(t.TempDir(), "v6.img")
	m, v, err := build(Sample(6), out)
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	read := func(off int64, n int) []byte {
		b := make([]byte, n)
		if _, err := img.ReadAt(b, peDataAt+off); err != nil {
			t.Fatal(err)
		}
		return b
	}
	// .fdc.sf spans blocks 7, 10, 11, …; the root directory is block 8.
	if got := v.fdc.blocks[:3]; !slices.Equal(got, []int64{7, 10, 11}) {
		t.Errorf(".fdc.sf blocks start %v, want [7 10 11]", got)
	}
	if a := v.root.ptrs[0]; a != v.g.fbAddr(8, false) {
		t.Errorf("root directory at %#x, want SFB 8", a)
	}
	// .sbc.sf: 5916 sub-blocks in 370 blocks, two runs, ZLA 5 through one
	// PB2, flags 8.
	if v.sbc.numRes != 5916 || v.sbc.nblocks != 370 {
		t.Errorf(".sbc.sf: %d sub-blocks in %d blocks, want 5916 in 370", v.sbc.numRes, v.sbc.nblocks)
	}
	runs := 1
	for i := 1; i < len(v.sbc.blocks); i++ {
		if v.sbc.blocks[i] != v.sbc.blocks[i-1]+1 {
			runs++
		}
	}
	if runs != 2 {
		t.Errorf(".sbc.sf in %d runs, want 2", runs)
	}
	fd := read(v.resLogical(v.fdc, 4), 0x2000)
	meta := fd[0x1000:]
	if zla, flags, npb := binary.LittleEndian.Uint32(meta[0x44:]), binary.LittleEndian.Uint32(meta[0x10:]), binary.LittleEndian.Uint32(meta[0x5C:]); zla != 5 || flags != 8 || npb != 1 {
		t.Errorf(".sbc.sf FD: ZLA %d flags %d numPointerBlocks %d, want 5 8 1", zla, flags, npb)
	}
	if a := binary.LittleEndian.Uint64(fd[0x1600:]); a != 5 {
		t.Errorf(".sbc.sf FD: first address %#x, want PB2 0x5", a)
	}
	pb := read(v.resLogical(v.pb2, 0), 8*370)
	for i, blk := range v.sbc.blocks {
		if a := binary.LittleEndian.Uint64(pb[i*8:]); a != v.g.fbAddr(blk, false) {
			t.Fatalf("PB2 entry %d: %#x, want SFB %d", i, a, blk)
		}
	}
	// Resource header flags.
	for _, c := range []struct {
		f     *resFile
		off   int64
		flags uint32
	}{{v.fdc, 0, 4}, {v.pbc, 0, 4}, {v.sbc, 0, 4}, {v.pb2, 0, 4}, {v.jbc, 0, 0}, {v.fbb, 0, 0x35}, {v.fbb, 0x1000, 0x2A}} {
		h := read(v.fileLogical(c.f, c.off), 0x40)
		if got := binary.LittleEndian.Uint32(h[0x28:]); got != c.flags || binary.LittleEndian.Uint32(h[0x20:]) != 0x72666D64 {
			t.Errorf("%s header at %#x: flags %#x, want %#x (signature %#x)", c.f.name, c.off, got, c.flags, binary.LittleEndian.Uint32(h[0x20:]))
		}
	}
	// .sdd.sf: a 0x11000-byte directory whose "." is a system file; the
	// root's link count includes it.
	sdd := m.file(".sdd.sf")
	if sdd.Type != "dir" || sdd.Size != 0x11000 || !sdd.System {
		t.Errorf(".sdd.sf: %+v", sdd)
	}
	rootFD := read(v.resLogical(v.fdc, 0), 0x2000)[0x1000:]
	subdirs := uint32(2)
	for _, c := range v.root.children {
		if c.isDir() {
			subdirs++
		}
	}
	if n := binary.LittleEndian.Uint32(rootFD[8:]); n != subdirs {
		t.Errorf("root link count %d, want %d", n, subdirs)
	}
	// User FDs from 9, generations 1, 2, … in creation order; parentFD set;
	// subdirectories in sub-blocks.
	gen := uint32(0)
	for _, n := range v.nodes {
		if n.system || n == v.root {
			continue
		}
		gen++
		if n.gen != gen {
			t.Errorf("%s: generation %d, want %d", n.path, n.gen, gen)
		}
		if n.typ == fdDir && n.zla != zlaSubBlock {
			t.Errorf("%s: directory with ZLA %d, want sub-blocks", n.path, n.zla)
		}
		meta := read(v.resLogical(v.fdc, n.fd), 0x2000)[0x1000:]
		if p := binary.LittleEndian.Uint32(meta[0x70:]); p != v.g.fdAddr(n.parent.fd) {
			t.Errorf("%s: parentFD %#x", n.path, p)
		}
	}
	if first := v.nodes[slices.IndexFunc(v.nodes, func(n *node) bool { return !n.system && n != v.root })]; first.fd != 9 {
		t.Errorf("first user FD %d, want 9", first.fd)
	}
}

func (m *Manifest) file(p string) ManifestFile {
	for _, f := range m.Files {
		if f.Path == p {
			return f
		}
	}
	return ManifestFile{}
}

// Spec checks: what the generator refuses.
func TestSpecErrors(t *testing.T) {
	for name, s := range map[string]Spec{
		"vmfs6 2MiB":       {VMFS: 6, BlockSize: 2 << 20},
		"vmfs5 fresh 8MiB": {VMFS: 5, BlockSize: 8 << 20},
		"3MiB":             {VMFS: 3, BlockSize: 3 << 20},
		"upgraded vmfs6":   {VMFS: 6, Upgraded: true},
		"local vmfs3":      {VMFS: 3, Local: true},
		"nodense vmfs6":    {VMFS: 6, NoDenseSBPC: true},
		"layout":           {VMFS: 5, Layout: "other"},
		"rdm snapshot": {VMFS: 5, Disks: []DiskSpec{{Path: "r/r.vmdk", Type: RDMPhysical, Size: 1 << 30}},
			Snapshots: []SnapshotSpec{{Base: "r/r.vmdk"}}},
	} {
		if _, err := Build(s, filepath.Join(t.TempDir(), "x.img")); err == nil {
			t.Errorf("%s: built, want an error", name)
		}
	}
}

// Colliding names share one hash index with distinct link hashes.
func TestCollidingNames(t *testing.T) {
	names := CollidingNames(15, "c", false)
	h16 := map[uint16]bool{}
	for _, n := range names {
		h := vmfs6NameHash(n)
		if h%dirMod != vmfs6NameHash(names[0])%dirMod {
			t.Errorf("%s: index %d, want %d", n, h%dirMod, vmfs6NameHash(names[0])%dirMod)
		}
		if h16[uint16(h>>16)] {
			t.Errorf("%s: link hash repeats", n)
		}
		h16[uint16(h>>16)] = true
	}
}

// The first sub-blocks of the ESXi VMFS6 layout lie in .sbc.sf's second run.
func TestESXiSubBlocksInSecondRun(t *testing.T) {
	_, v, err := build(IssueSpec(6), filepath.Join(t.TempDir(), "v6.img"))
	if err != nil {
		t.Fatal(err)
	}
	off := v.g.resOffset(v.sbc.geom, v.sbStart)
	half := (v.sbc.nblocks + 1) / 2
	if off/v.g.blockSize < half {
		t.Errorf("first sub-block at file offset %#x, in the first run (%d blocks)", off, half)
	}
}
