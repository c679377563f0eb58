// Package vmfs reads VMware VMFS3, VMFS5 and VMFS6 volumes, read-only, from
// one device or image file or from the several extents of a spanned volume.
//
// A volume is reached through one of four entry points, found automatically
// on every device: an LVM device header (magic 0xC001D00D) 1 MiB into the
// device, the same header 1 MiB into an MBR partition of type 0xFB or a GPT
// partition of type AA31E02A-400F-11DB-9590-000C2911D1B8, or a bare logical
// volume (the FS descriptor, magic 0x2FABF15E, 2 MiB into the device). The
// LVM physical extents of every device are concatenated by their logical
// offset into one logical volume, in whatever order the devices were given;
// every address of the filesystem is an offset in that logical volume.
//
// Files are opened by slash-separated paths relative to the volume root
// ("vm1/vm1-flat.vmdk"). A *File implements formats.Image: ReadAt goes
// straight to the devices (file data is never cached) with as few device reads
// as the block map allows, unallocated blocks (holes) and to-be-zeroed (TBZ)
// blocks read as zeros without touching the device, and Extent reports Data,
// Zero and Hole runs from metadata alone. File descriptors, pointer blocks and
// directory blocks are kept in a bounded LRU cache shared by all files of a
// volume; every method is safe for concurrent use.
//
// Every error returned by the package for a problem with the volume is an
// *Error naming the structure, the field and the byte offset involved; it
// unwraps to one of the sentinels ErrCorrupt, ErrUnsupported, ErrNotFound,
// ErrMissingExtent, ErrNotVMFS, ErrNotDir, ErrNoData or ErrInvalid, or to the
// I/O error of the device.
//
// The on-disk format is described in docs/vmfs-format.md of the project; the
// section numbers cited in comments (§n) refer to it.
package vmfs
