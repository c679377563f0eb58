// Package vmdk reads VMware virtual disks — a text descriptor with its
// extents, and the snapshot chain above it — as one formats.Image.
//
// Layering, bottom up:
//
//   - FS / File: how files are reached. A File is itself a formats.Image, so
//     a flat extent on a VMFS volume reports its own holes (unallocated
//     blocks) and zero blocks (to-be-zeroed); DirFS serves a local directory.
//   - Descriptor: ParseDescriptor turns descriptor text into header keys,
//     extent lines and the disk database, tolerating what real files contain
//     (CRLF, NUL padding, comments, spaces around '=', key case, legacy
//     encodings).
//   - extents: each extent line becomes an extent that maps an
//     extent-relative offset to a run of Data (where in which file), Zero or
//     Hole: FLAT/VMFS (bytes of a file), ZERO, and the grain-table formats
//     COWD (VMFSSPARSE), seSparse (SESPARSE) and KDMV (SPARSE: hosted
//     sparse and streamOptimized with zlib grains). Grain directories are
//     read at open, bounded by the file size; grain tables are read on
//     demand into a bounded LRU cache.
//   - layer: one disk of a chain — its extents concatenated in descriptor
//     order.
//   - Disk: the chain, leaf first. For every run the topmost layer that
//     answers Data or Zero wins; a Hole falls through to the parent; a Hole
//     at the base reads as zeros and is reported as Hole. Runs that one layer
//     stores contiguously are read with a single ReadAt of its file.
//
// Open follows parentFileNameHint (relative, /vmfs/volumes/<volume>/…,
// Windows paths), checks each child's parentCID against its parent's CID,
// refuses loops and chains deeper than Options.MaxDepth. Errors are *Error
// values naming file, structure, field and byte offset (or descriptor
// line), and unwrap to the package's sentinels.
//
// Choices where readers differ: a seSparse grain of type 1 (SCSI-unmapped)
// reads as zeros, as in qemu; bytes past the end of an extent file read as
// zeros, as in qemu; RDONLY extents are readable; ZERO extents occupy their
// place (qemu drops them); raw device mappings, NOACCESS extents and device
// disks are refused with ErrNotConvertible.
package vmdk
