// Package testimages builds synthetic VMFS volumes (VMFS3, VMFS5 and VMFS6,
// VMFS-L, one or several extent files) holding VMware virtual disks — thin,
// lazy-zeroed thick with TBZ blocks full of garbage, eager-zeroed thick,
// COWD or seSparse snapshot chains, raw device mappings — together with a
// Manifest: the ground truth about every file and disk, computed from what
// the generator put in, never by reading the image back.
//
// By default the system files are laid out as ESXi lays them out
// (LayoutESXi, vmfs-format.md §15.1: on VMFS6 .sbc.sf mapped through a PB2
// pointer block over two runs of blocks, .fdc.sf over non-contiguous
// blocks, resource files sized like a fresh volume's, cluster metadata and
// free bitmaps, a .sdd.sf directory); LayoutMinimal keeps §13's recipe,
// which some oracles need.
//
// It deliberately does not import package vmfs: the generator and the reader
// must not share one author's understanding of the format. Independent tools
// (debugvmfs, debugvmfs6, vmfs-fuse, qemu-img) judge both.
package testimages

// Provisioning of a base disk.
const (
	Thin  = "thin"  // unallocated blocks where there is no data
	Lazy  = "lazy"  // every block allocated; blocks without data are TBZ (and hold garbage)
	Eager = "eager" // every block allocated and written
)

// Delta formats of snapshot layers.
const (
	COWD     = "cowd"     // vmfsSparse, "-delta.vmdk", 512-byte grains (VMFS5 default)
	SESparse = "sesparse" // seSparse, "-sesparse.vmdk", 4 KiB grains (VMFS6 default)
)

// Raw device mappings: a descriptor whose only extent is a mapping file (FD
// type 6) of the LUN's size that holds no data on the datastore.
const (
	RDMPhysical = "rdmp" // vmfsPassthroughRawDeviceMap, "-rdmp.vmdk"
	RDMVirtual  = "rdm"  // vmfsRawDeviceMap, "-rdm.vmdk"
)

// Volume layouts (Spec.Layout).
const (
	// LayoutESXi lays the system files out as ESXi does (vmfs-format.md
	// §15.1): on VMFS6 .sbc.sf through a PB2 pointer block in two runs,
	// .fdc.sf over non-contiguous blocks, the resource files sized like a
	// freshly formatted volume's, resource flags and cluster metadata, a
	// .sdd.sf directory, generations in creation order. The default.
	LayoutESXi = "esxi"
	// LayoutMinimal is vmfs-format.md §13's recipe: every system file one
	// contiguous run of blocks, mapped directly, sized for what the volume
	// holds. Some oracles (debugvmfs6) read only this one.
	LayoutMinimal = "minimal"
)

// DiskSpec asks for a base virtual disk: a descriptor at Path (such as
// "vm1/vm1.vmdk") and its flat extent beside it ("vm1/vm1-flat.vmdk").
type DiskSpec struct {
	Path string
	// Type is Thin, Lazy or Eager, or RDMPhysical / RDMVirtual for a raw
	// device mapping of a LUN of Size bytes (Fill and snapshots do not apply).
	Type string
	Size int64   // virtual size in bytes, a multiple of 512
	Fill float64 // percent of the disk holding data; < 0 means the default for Type
	Seed int64
}

// SnapshotSpec adds one delta on top of the chain whose base descriptor is
// Base: "vm1/vm1-000001.vmdk" for the first, then "-000002", …
type SnapshotSpec struct {
	Base  string
	Fill  float64 // percent of the disk written in this delta; < 0 means 5
	Seed  int64
	Delta string // COWD or SESparse; "" means the volume version's default
	// Parent, when set, is the descriptor of the chain of Base to build on
	// instead of its current leaf: a revert to an older snapshot starts a
	// new branch there. The new delta becomes the chain's current leaf.
	Parent string
}

// FileSpec asks for an ordinary file, directory or symlink with a chosen
// storage layout, to exercise every block-address form of the reader.
type FileSpec struct {
	Path string
	Type string // "file" (default), "dir", "symlink"
	// Entries fills a directory (Type "dir") with that many empty files
	// named Prefix0000, Prefix0001, … (Prefix "" means "f"), to make large
	// directories; Names adds files with exactly these names, each holding
	// its name as content (for VMFS6 hash collisions, see CollidingNames).
	Entries int
	Prefix  string
	Names   []string
	Size    int64  // file size (files)
	Target  string // symlink target
	Seed    int64
	// Layout forces the storage form of a file: "" picks what VMFS would
	// (resident when small, sub-blocks, file blocks, pointer blocks),
	// "resident", "subblock", "blocks", "pointer" (single indirect even when
	// small), "double" (double indirect), "lfb" (VMFS6 large file blocks of
	// 512 MiB; eager disks of 512 MiB or more get them by default).
	Layout string
	// Holes lists file-block indexes left unallocated; TBZ lists file-block
	// indexes allocated as to-be-zeroed (filled with garbage on the volume).
	Holes, TBZ []int64
	// Allocate, when set, lists the only file-block indexes that hold
	// data: every other block is a hole (for huge sparse files).
	Allocate []int64
	// Content, when not nil, is the file's bytes (Size is ignored).
	Content []byte
}

// Spec describes a whole volume.
type Spec struct {
	VMFS    int    // 3, 5 or 6
	Size    int64  // logical volume size; 0 picks the smallest that fits
	Extents int    // number of device files (spanned volume); 0 means 1
	Label   string // "" means "vmfs2vhd-test"
	// Partition puts a partition table on every device file: "" (none: the
	// LVM header at 1 MiB), "mbr" (type 0xFB) or "gpt" (the VMFS type GUID);
	// the partition starts at 1 MiB.
	Partition string
	// LiveHeartbeat writes one live heartbeat slot, as a host that had the
	// volume mounted leaves it.
	LiveHeartbeat bool
	Seed          int64 // seeds UUIDs and default content seeds
	// Layout is LayoutESXi ("" means it) or LayoutMinimal.
	Layout string
	// BlockSize is the file block size: 0 or 1 MiB, or on VMFS3 and on an
	// upgraded VMFS5 2, 4 or 8 MiB.
	BlockSize int64
	// Upgraded makes a VMFS5 as an in-place upgrade from VMFS3 leaves it:
	// the VMFS3 block size (BlockSize) and 64 KiB sub-blocks, config
	// without DENSE_SBPC, .pb2.sf and .sdd.sf in FDs taken after the user
	// files (found through the FS descriptor's pb2VolAddr/sddVolAddr), and
	// the MBR partition such volumes keep (Partition "" means "mbr").
	Upgraded bool
	// NoDenseSBPC leaves DENSE_SBPC (0x4) out of a VMFS5's config:
	// sub-block addresses carry 4 resource bits.
	NoDenseSBPC bool
	// Local makes a VMFS-L volume (FS magic 0x2FABF15F, LVM flags bit 0)
	// with VMFS5 or VMFS6 geometry.
	Local     bool
	Disks     []DiskSpec
	Snapshots []SnapshotSpec
	Files     []FileSpec
	// VMs adds virtual machines as ESXi writes them (vm.go): their disks
	// and snapshot trees become Disks and Snapshots, their files Files.
	VMs []VMSpec
	// HashLimit bounds the virtual size of disks whose full sha256 is
	// computed (hashing a 2 TiB disk takes minutes); 0 means 64 GiB.
	HashLimit int64
}

// Manifest is the ground truth of a built volume.
type Manifest struct {
	VMFS   int      `json:"vmfs"`
	Images []string `json:"images"`
	Label  string   `json:"label"`
	UUID   string   `json:"uuid"`
	Size   int64    `json:"size"` // logical volume size
	// BlockSize is the file block size; FreeBlocks the file blocks no file
	// or system file uses. VMFS3/5 record them in .fbb.sf's cluster bitmaps
	// (bit set = free). VMFS6 (ESXi layout) records them in the SFB cluster
	// bitmaps — SFB cluster c's header is LFB resource c of .fbb.sf, one
	// per 512 MiB — and FreeBlocks is the number of set bits there, in
	// 1 MiB file blocks: a block inside a large file block (LFB) counts as
	// used (its SFB bits are clear), a block of a never-touched 512 MiB
	// region counts as free (all its SFB bits set, and its LFB bit set too:
	// the LFB bitmap says which whole regions are free, so adding both
	// would count those blocks twice). The minimal VMFS6 layout writes no
	// cluster metadata; FreeBlocks still says what is free.
	BlockSize  int64          `json:"block_size"`
	FreeBlocks int64          `json:"free_blocks"`
	Files      []ManifestFile `json:"files"`
	Disks      []ManifestDisk `json:"disks"`
	// VMs are the expected answers of `vmfs2vhd vms --json` for Spec.VMs.
	VMs []ManifestVM `json:"vms,omitempty"`
}

// ManifestFile is one file, directory or symlink; Path is relative to the
// volume root, without a leading slash.
type ManifestFile struct {
	Path   string `json:"path"`
	Type   string `json:"type"` // "file", "dir", "symlink", "rdm" (a mapping: Size bytes, no data)
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"` // files and symlinks (of the target text)
	Target string `json:"target,omitempty"`
	// Allocated counts bytes in allocated, non-TBZ blocks (clipped to Size).
	Allocated int64 `json:"allocated"`
	// Layout is the storage form used: resident, subblock, blocks, pointer,
	// double, lfb; "pb2" for a system file mapped through .pb2.sf (ZLA 5);
	// "" for an RDM.
	Layout string `json:"layout,omitempty"`
	FD     string `json:"fd,omitempty"` // FD address, as 0x%08x
	// Holes and TBZ count the unallocated and to-be-zeroed blocks.
	Holes int64 `json:"holes,omitempty"`
	TBZ   int64 `json:"tbz,omitempty"`
	// System is set for the volume's resource files (.fdc.sf …).
	System bool `json:"system,omitempty"`
	// Map lists the file's runs as the volume stores them, merged: "data"
	// (allocated blocks, sub-blocks or resident bytes), "zero" (TBZ blocks)
	// and "hole" (unallocated blocks), clipped to Size.
	Map []MapRun `json:"map,omitempty"`
}

// MapRun is one run of a file's storage map.
type MapRun struct {
	Off  int64  `json:"off"`
	Len  int64  `json:"len"`
	Kind string `json:"kind"` // "data", "zero", "hole"
}

// ManifestDisk is one virtual disk as seen from one descriptor (a point of a
// chain), flattened.
type ManifestDisk struct {
	Path         string   `json:"path"`
	VirtualSize  int64    `json:"virtual_size"`
	Allocated    int64    `json:"allocated"`
	Provisioning string   `json:"provisioning"` // thin, lazy, eager, cowd, sesparse, rdmp, rdm (no data: no SHA256)
	SHA256       string   `json:"sha256,omitempty"`
	Chain        []string `json:"chain"` // descriptor paths, this one first, base last
	Extent       string   `json:"extent"`
	Leaf         bool     `json:"leaf"` // no delta is built on this descriptor
}
