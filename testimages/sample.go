package testimages

import "fmt"

// Sample returns a volume spec that covers every layout the generator can
// make on the given VMFS version: thin, lazy (TBZ blocks full of garbage) and
// eager disks; snapshot chains of the version's default delta format (three
// levels on an eager base, which every oracle can read, and two on a thin
// base); a seSparse delta on VMFS5 (ESXi uses it there for disks ≥ 2 TB); a
// UTF-8 name with spaces; resident, sub-block, multi-sub-block, file-block,
// single- and double-indirect files with holes and TBZ blocks; nested and
// empty directories; a symlink.
func Sample(vmfs int) Spec {
	g := geometryFor(vmfs)
	B := g.blockSize
	s := Spec{
		VMFS: vmfs, Seed: int64(vmfs) * 1000, Label: "sample",
		Disks: []DiskSpec{
			{Path: "vm1/vm1.vmdk", Type: Thin, Size: 64 << 20, Fill: 30},
			{Path: "vm2/vm2.vmdk", Type: Lazy, Size: 32 << 20, Fill: 50},
			{Path: "vm3/vm3.vmdk", Type: Eager, Size: 16 << 20, Fill: -1},
			{Path: "vm4/vm4.vmdk", Type: Eager, Size: 24<<20 + 512, Fill: 60},
			{Path: "ünï cödé/ünï cödé.vmdk", Type: Thin, Size: 4 << 20, Fill: 50},
		},
		Snapshots: []SnapshotSpec{
			{Base: "vm1/vm1.vmdk", Fill: 5},
			{Base: "vm1/vm1.vmdk", Fill: 5},
			{Base: "vm4/vm4.vmdk", Fill: 10},
			{Base: "vm4/vm4.vmdk", Fill: 5},
			{Base: "vm4/vm4.vmdk", Fill: 2},
		},
	}
	if vmfs == 5 {
		s.Disks = append(s.Disks, DiskSpec{Path: "vm5/vm5.vmdk", Type: Thin, Size: 8 << 20, Fill: 40})
		s.Snapshots = append(s.Snapshots, SnapshotSpec{Base: "vm5/vm5.vmdk", Fill: 20, Delta: SESparse})
	}
	// A sparse single-indirect file: only the first and last blocks
	// allocated, the last one partial.
	nb := g.ptrs + 10
	var holes []int64
	for i := int64(1); i < nb-1; i++ {
		holes = append(holes, i)
	}
	files := []FileSpec{
		{Path: "files/resident.txt", Size: 100},
		{Path: "files/subblock.bin", Size: 5000, Layout: "subblock"},
		{Path: "files/multi-subblock.bin", Size: 20000, Layout: "subblock"},
		{Path: "files/blocks.bin", Size: 3*B + 12},
		{Path: "files/hole-tbz.bin", Size: 4*B + 12, Holes: []int64{2}, TBZ: []int64{1}},
		{Path: "files/pointer-sparse.bin", Size: nb*B - 12345, Holes: holes},
		{Path: "files/pointer-dense.bin", Size: 2*B + 77, Layout: "pointer"},
		{Path: "files/nested/deeper/file.bin", Size: 70 << 10},
		{Path: "files/empty.bin", Size: 0},
		{Path: "empty-dir", Type: "dir"},
		{Path: "link-to-vm1", Type: "symlink", Target: "vm1/vm1.vmdk"},
	}
	if vmfs != 3 {
		files = append(files, FileSpec{Path: "files/double.bin", Size: 3*B + 100, Layout: "double"})
	}
	if vmfs == 3 {
		// VMFS3 has no resident files.
		files[0].Size = 100
	}
	s.Files = files
	return s
}

// PointerSpec is a volume whose thin disk needs pointer blocks: 300 MiB on
// VMFS3/5 (over the 256 direct addresses), 400 MiB on VMFS6 (over 320).
func PointerSpec(vmfs int) Spec {
	size := int64(300 << 20)
	if vmfs == 6 {
		size = 400 << 20
	}
	return Spec{
		VMFS: vmfs, Seed: int64(vmfs)*1000 + 1, Label: "pointer",
		Disks:     []DiskSpec{{Path: "big/big.vmdk", Type: Thin, Size: size, Fill: 20}},
		Snapshots: []SnapshotSpec{{Base: "big/big.vmdk", Fill: 3}},
	}
}

// SpannedSpec is Sample on two extents: file blocks alternate between the
// devices in runs of 8.
func SpannedSpec(vmfs int) Spec {
	s := Sample(vmfs)
	s.Extents, s.Seed, s.Label = 2, s.Seed+2, "spanned"
	return s
}

// IssueSpec is the volume of the generator's acceptance command:
//
//	vmfs2vhd mkimage --vmfs V --disk vm1/vm1.vmdk,type=thin,size=64MiB,fill=30
//	  --disk vm2/vm2.vmdk,type=lazy,size=32MiB,fill=50 --disk vm3/vm3.vmdk,type=eager,size=16MiB
//	  --snapshot vm1/vm1.vmdk,fill=5 --snapshot vm1/vm1.vmdk,fill=5 OUT
func IssueSpec(vmfs int) Spec {
	return Spec{
		VMFS: vmfs, Seed: 1,
		Disks: []DiskSpec{
			{Path: "vm1/vm1.vmdk", Type: Thin, Size: 64 << 20, Fill: 30},
			{Path: "vm2/vm2.vmdk", Type: Lazy, Size: 32 << 20, Fill: 50},
			{Path: "vm3/vm3.vmdk", Type: Eager, Size: 16 << 20, Fill: -1},
		},
		Snapshots: []SnapshotSpec{{Base: "vm1/vm1.vmdk", Fill: 5}, {Base: "vm1/vm1.vmdk", Fill: 5}},
	}
}

// LFBSpec is a VMFS6 volume with large file blocks: an eager disk of
// 512 MiB + 3 MiB (two 512 MiB blocks, the second partial) with a seSparse
// snapshot, and a file whose second large block is a hole.
func LFBSpec() Spec {
	const lfb = 512 << 20
	return Spec{
		VMFS: 6, Seed: 6003, Label: "lfb",
		Disks:     []DiskSpec{{Path: "thick/thick.vmdk", Type: Eager, Size: lfb + 3<<20, Fill: 2}},
		Snapshots: []SnapshotSpec{{Base: "thick/thick.vmdk", Fill: 1}},
		Files:     []FileSpec{{Path: "lfb-hole.bin", Size: lfb + 4096, Layout: "lfb", Holes: holeRange(512, 513)}},
	}
}

func holeRange(from, to int64) []int64 {
	var h []int64
	for i := from; i < to; i++ {
		h = append(h, i)
	}
	return h
}

// CollidingNames returns n names prefix000000, prefix000001, … chosen so
// that all share one VMFS6 hash index (hash % 16001, or % 15973 in the
// root) with distinct link hashes: in a hashed directory they make a link
// group (location type 2) that fills its 12 links and chains to the next
// through nextGroup when n > 12 (vmfs-format.md §9.2).
func CollidingNames(n int, prefix string, root bool) []string {
	mod := uint64(dirMod)
	if root {
		mod = dirRootMod
	}
	type bucket struct {
		names []string
		h16   map[uint16]bool
	}
	buckets := map[uint64]*bucket{}
	for i := 0; ; i++ {
		name := fmt.Sprintf("%s%06d", prefix, i)
		h := vmfs6NameHash(name)
		bk := buckets[h%mod]
		if bk == nil {
			bk = &bucket{h16: map[uint16]bool{}}
			buckets[h%mod] = bk
		}
		if bk.h16[uint16(h>>16)] {
			continue
		}
		bk.h16[uint16(h>>16)] = true
		bk.names = append(bk.names, name)
		if len(bk.names) == n {
			return bk.names
		}
	}
}

// BigDirSpec is a volume of large directories: big/some with 300 entries
// (VMFS3/5: several sub-blocks), big/many with 8000 (VMFS3/5: file blocks,
// two of them with 1 MiB blocks; VMFS6: 573 directory blocks, many hash
// indexes shared through link groups), and on VMFS6 big/collide, whose 15
// names share one hash index (a link group of 12 links chained to a second
// one) and 3 more another. A few files hold data.
func BigDirSpec(vmfs int) Spec {
	s := Spec{
		VMFS: vmfs, Seed: int64(vmfs)*1000 + 5, Label: "bigdir",
		Files: []FileSpec{
			{Path: "big/some", Type: "dir", Entries: 300, Prefix: "entry-"},
			{Path: "big/many", Type: "dir", Entries: 8000, Prefix: "file-with-a-longer-name-"},
			{Path: "big/some/data.bin", Size: 100000},
			{Path: "big/many/data.bin", Size: 3 << 20},
		},
	}
	if vmfs == 6 {
		s.Files = append(s.Files,
			FileSpec{Path: "big/collide", Type: "dir", Names: append(CollidingNames(15, "c", false), CollidingNames(3, "d", false)...)},
			FileSpec{Path: "big/collide/data.bin", Size: 5000})
	}
	return s
}

// RDMSpec is IssueSpec's disks next to two raw device mappings (physical
// compatibility, 100 GiB, and virtual, 2 TiB: descriptors and mapping FDs
// of type 6 without data) and a huge sparse file that needs double
// indirection (ZLA 0x10D0): 300 GiB on VMFS5 (over the 256 GiB of single
// indirection), 3 TiB on VMFS6 (over 2.5 TiB), data in its first four and
// last two blocks.
func RDMSpec(vmfs int) Spec {
	s := IssueSpec(vmfs)
	s.Seed, s.Label = int64(vmfs)*1000+7, "rdm"
	s.Disks = append(s.Disks,
		DiskSpec{Path: "rdm/lun-p.vmdk", Type: RDMPhysical, Size: 100 << 30},
		DiskSpec{Path: "rdm/lun-v.vmdk", Type: RDMVirtual, Size: 2 << 40})
	size := int64(300 << 30)
	if vmfs == 6 {
		size = 3 << 40
	}
	nb := size >> 20
	s.Files = append(s.Files, FileSpec{Path: "huge/huge.bin", Size: size - 4096, Allocate: []int64{0, 1, 2, 3, nb - 2, nb - 1}})
	return s
}
