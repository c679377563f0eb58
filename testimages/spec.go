// Package testimages builds synthetic VMFS volumes (VMFS5 and VMFS6, one or
// several extent files) holding VMware virtual disks — thin, lazy-zeroed
// thick with TBZ blocks full of garbage, eager-zeroed thick, and COWD or
// seSparse snapshot chains — together with a Manifest: the ground truth about
// every file and disk, computed from what the generator put in, never by
// reading the image back.
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

// DiskSpec asks for a base virtual disk: a descriptor at Path (such as
// "vm1/vm1.vmdk") and its flat extent beside it ("vm1/vm1-flat.vmdk").
type DiskSpec struct {
	Path string
	Type string  // Thin, Lazy or Eager
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
}

// FileSpec asks for an ordinary file, directory or symlink with a chosen
// storage layout, to exercise every block-address form of the reader.
type FileSpec struct {
	Path   string
	Type   string // "file" (default), "dir", "symlink"
	Size   int64  // file size (files)
	Target string // symlink target
	Seed   int64
	// Layout forces the storage form of a file: "" picks what VMFS would
	// (resident when small, sub-blocks, file blocks, pointer blocks),
	// "resident", "subblock", "blocks", "pointer" (single indirect even when
	// small), "double" (double indirect), "lfb" (VMFS6 large file blocks of
	// 512 MiB; eager disks of 512 MiB or more get them by default).
	Layout string
	// Holes lists file-block indexes left unallocated; TBZ lists file-block
	// indexes allocated as to-be-zeroed (filled with garbage on the volume).
	Holes, TBZ []int64
}

// Spec describes a whole volume.
type Spec struct {
	VMFS    int    // 5 or 6
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
	Disks         []DiskSpec
	Snapshots     []SnapshotSpec
	Files         []FileSpec
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
	// uses (VMFS3/5 record them in .fbb.sf's cluster bitmaps).
	BlockSize  int64          `json:"block_size"`
	FreeBlocks int64          `json:"free_blocks"`
	Files      []ManifestFile `json:"files"`
	Disks      []ManifestDisk `json:"disks"`
}

// ManifestFile is one file, directory or symlink; Path is relative to the
// volume root, without a leading slash.
type ManifestFile struct {
	Path   string `json:"path"`
	Type   string `json:"type"` // "file", "dir", "symlink"
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"` // files and symlinks (of the target text)
	Target string `json:"target,omitempty"`
	// Allocated counts bytes in allocated, non-TBZ blocks (clipped to Size).
	Allocated int64 `json:"allocated"`
	// Layout is the storage form used: resident, subblock, blocks, pointer, double.
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
	Provisioning string   `json:"provisioning"` // thin, lazy, eager, cowd, sesparse
	SHA256       string   `json:"sha256,omitempty"`
	Chain        []string `json:"chain"` // descriptor paths, this one first, base last
	Extent       string   `json:"extent"`
	Leaf         bool     `json:"leaf"` // no delta is built on this descriptor
}
