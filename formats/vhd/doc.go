// Package vhd plans Microsoft VHD files (Virtual Hard Disk Image Format
// Specification 1.0, summarised in docs/image-formats.md §4.2) and reads
// fixed and dynamic VHDs back.
//
// Plan is a pure function from a disk's size and extent list to a
// formats.Layout; formats.WriteLayout writes it to a file (sparse where the
// layout has gaps) and formats.StreamLayout to a pipe. A dynamic VHD is laid
// out as
//
//	0            footer copy (512 bytes)
//	512          dynamic header (1024)
//	1536         BAT: ceil(size / 2 MiB) big-endian u32 sector offsets,
//	             0xFFFFFFFF = unallocated, padded to 512 bytes with 0xFF
//	4 KiB-aligned blocks, in disk order, one per 2 MiB that holds Data:
//	             [zeros][sector bitmap, 512 bytes of 0xFF][data, 2 MiB]
//	             so that every block's data starts on a 4 KiB boundary
//	end          footer (512)
//
// and a fixed VHD as the disk's bytes followed by the footer.
//
// # Size
//
// Readers disagree on a VHD's size: Hyper-V, Azure and libvhdi use the
// footer's current size; Virtual PC uses the C·H·S geometry, which is
// usually smaller; qemu uses C·H·S unless the creator application is one it
// trusts or the geometry is the maximum 65535/16/255. Plan records current
// size = original size = the exact disk size, the specification's CHS
// geometry, and the creator application "win " (version 10.0, host "Wi2k"),
// which every qemu version (before and after the 10.0 change of rule) reads
// by current size — so all of them report the exact size. A custom
// Options.CreatorApp that qemu does not trust gets the maximum geometry
// instead, for the same result.
//
// A size that is not a multiple of 512 is rounded up to one (qemu and
// Hyper-V address whole sectors; the added bytes read as zeros) and the
// rounding is reported in Layout.Notes. Azure output (Options.Azure) is a
// fixed VHD whose size is rounded up to whole MiB, at least 20 MiB. Sizes
// beyond MaxSize (2040 GiB; MaxAzureSize, 32 TiB, for Azure) are refused
// with ErrTooLarge before anything is planned.
//
// # Reading
//
// Open reads fixed and dynamic VHDs and reports the current size (also for
// Virtual PC's disks; Info has the geometry for callers that want C·H·S).
// Differencing disks are refused with ErrUnsupported. All errors are *Error
// values naming the structure, field and file offset, unwrapping to
// ErrCorrupt, ErrUnsupported, ErrTooLarge or ErrInvalid.
package vhd
