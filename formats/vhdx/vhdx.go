// Package vhdx plans dynamic VHDX files (Microsoft's MS-VHDX, "Virtual Hard
// Disk v2") and reads them back.
//
// Plan is a pure function from a virtual size and an extent list to a
// formats.Layout; it does no I/O, so the same plan can be written into a
// seekable file (formats.WriteLayout) or down a pipe (formats.StreamLayout).
// The file it describes is, in order:
//
//	0        file identifier "vhdxfile" + creator (UTF-16LE)
//	64 KiB   header 1 (sequence 1)           } both valid, CRC-32C,
//	128 KiB  header 2 (sequence 2, current)  } LogGuid zero: no log to replay
//	192 KiB  region table 1                  } identical; BAT and metadata
//	256 KiB  region table 2                  } regions, both Required
//	1 MiB    log (1 MiB, zero: unused)
//	2 MiB    metadata region (1 MiB): table + the five required items
//	3 MiB    BAT region (whole MiBs)
//	…        payload blocks, one per block holding Data, in virtual order
//
// A block that any Data extent touches is stored whole
// (PAYLOAD_BLOCK_FULLY_PRESENT); its bytes outside Data extents are zeros.
// Every other block is PAYLOAD_BLOCK_ZERO with FileOffsetMB 0, whether the
// source called it Zero or Hole: MS-VHDX §2.5.1.1 says a NOT_PRESENT block
// of a dynamic disk holds undefined contents that a reader may return as
// arbitrary data, while a ZERO block is defined to read as zeros — and a
// hole at the bottom of a chain reads as zeros. Hyper-V itself marks the
// never-written blocks of a new dynamic disk ZERO (the iotest-dynamic-1G
// sample), as does qemu by default.
//
// Open reads dynamic and fixed VHDX files (no differencing disks) whose log
// is empty; a file whose log must be replayed is refused with ErrDirtyLog.
package vhdx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Sizes and offsets of the fixed structures (MS-VHDX §2.1, §2.2).
const (
	kib = 1 << 10
	mib = 1 << 20

	fileIDOff     = 0
	header1Off    = 64 * kib
	header2Off    = 128 * kib
	regionTab1Off = 192 * kib
	regionTab2Off = 256 * kib

	headerSize      = 4 * kib  // bytes covered by a header's checksum
	regionTableSize = 64 * kib // bytes covered by a region table's checksum
	metaTableSize   = 64 * kib // metadata table at the start of its region

	maxRegionEntries = 2047
	maxMetaEntries   = 2047

	// MaxSize is the largest virtual size MS-VHDX allows (64 TB).
	MaxSize = 64 << 40
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Signatures.
var (
	sigFileID   = [8]byte{'v', 'h', 'd', 'x', 'f', 'i', 'l', 'e'}
	sigHeader   = [4]byte{'h', 'e', 'a', 'd'}
	sigRegion   = [4]byte{'r', 'e', 'g', 'i'}
	sigMetadata = [8]byte{'m', 'e', 't', 'a', 'd', 'a', 't', 'a'}
)

// GUID is a GUID in its on-disk, Microsoft mixed-endian form: Data1, Data2
// and Data3 little-endian, Data4 as bytes.
type GUID [16]byte

// msGUID builds the on-disk form of the GUID written
// "d1-d2-d3-d4[0:2]-d4[2:8]".
func msGUID(d1 uint32, d2, d3 uint16, d4 [8]byte) GUID {
	var g GUID
	binary.LittleEndian.PutUint32(g[0:], d1)
	binary.LittleEndian.PutUint16(g[4:], d2)
	binary.LittleEndian.PutUint16(g[6:], d3)
	copy(g[8:], d4[:])
	return g
}

// String formats g the usual way (8-4-4-4-12 hex digits).
func (g GUID) String() string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X",
		binary.LittleEndian.Uint32(g[0:]), binary.LittleEndian.Uint16(g[4:]),
		binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:16])
}

// Region and metadata item GUIDs (MS-VHDX §2.3.1, §2.6.2).
var (
	guidBAT          = msGUID(0x2DC27766, 0xF623, 0x4200, [8]byte{0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08})
	guidMetaRegion   = msGUID(0x8B7CA206, 0x4790, 0x4B9A, [8]byte{0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E})
	guidFileParams   = msGUID(0xCAA16737, 0xFA36, 0x4D43, [8]byte{0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B})
	guidDiskSize     = msGUID(0x2FA54224, 0xCD1B, 0x4876, [8]byte{0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8})
	guidPage83       = msGUID(0xBECA12AB, 0xB2E6, 0x4523, [8]byte{0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46})
	guidLogicalSect  = msGUID(0x8141BF1D, 0xA96F, 0x4709, [8]byte{0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F})
	guidPhysicalSect = msGUID(0xCDA348C7, 0x445D, 0x4471, [8]byte{0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56})
	guidParentLoc    = msGUID(0xA8D35F2D, 0xB30B, 0x454D, [8]byte{0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C})
)

// BAT entry states (MS-VHDX §2.5.1). Bits 0–2 hold the state, bits 20–63
// the file offset in MiB.
const (
	stateNotPresent       = 0
	stateUndefined        = 1
	stateZero             = 2
	stateUnmapped         = 3
	stateUnmappedV095     = 5 // the 0.95 draft's value of UNMAPPED
	stateFullyPresent     = 6
	statePartiallyPresent = 7

	batStateMask  = 7
	batOffsetMask = ^uint64(mib - 1)
)

// Metadata item flags (MS-VHDX §2.6.1.2).
const (
	metaIsUser        = 1
	metaIsVirtualDisk = 2
	metaIsRequired    = 4
)

// File Parameters flags (MS-VHDX §2.6.2.1).
const (
	paramLeaveBlocksAllocated = 1
	paramHasParent            = 2
)

// Sentinel errors; every error from this package unwraps to one of them.
var (
	// ErrCorrupt: a structure is malformed, fails its checksum or points
	// outside the file.
	ErrCorrupt = errors.New("corrupt VHDX")
	// ErrUnsupported: a valid VHDX using a feature this package does not
	// read (differencing disks, unknown required regions or metadata).
	ErrUnsupported = errors.New("unsupported VHDX feature")
	// ErrDirtyLog: the header names a log that must be replayed before the
	// file can be read (open it once in Hyper-V, or `qemu-img check -r all`).
	ErrDirtyLog = errors.New("VHDX log must be replayed")
	// ErrInvalid: Plan was given options or extents it cannot honour.
	ErrInvalid = errors.New("invalid VHDX plan input")
)

// Error describes a problem with one field of one structure. Off is the
// absolute byte offset of the structure in the file, or -1 when the problem
// is not in a file (Plan input).
type Error struct {
	Struct string // "header 2", "region table 1", "BAT entry 17", "options"…
	Field  string // "Checksum", "LogGuid", "BlockSize"… or ""
	Off    int64
	Detail string
	Err    error // a sentinel
}

func (e *Error) Error() string {
	s := "vhdx: " + e.Struct
	if e.Off >= 0 {
		s += fmt.Sprintf(" at 0x%x", e.Off)
	}
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Detail
}

func (e *Error) Unwrap() error { return e.Err }

func errf(sentinel error, structure, field string, off int64, format string, args ...any) *Error {
	return &Error{Struct: structure, Field: field, Off: off, Detail: fmt.Sprintf(format, args...), Err: sentinel}
}

// chunkRatio returns the number of payload blocks per sector bitmap block
// (MS-VHDX §2.4.1): 2^23 sectors of a bitmap block over the sectors of a
// payload block.
func chunkRatio(blockSize, logicalSector int64) int64 {
	return (1 << 23) * logicalSector / blockSize
}

// batEntries returns the number of BAT entries of a dynamic or fixed VHDX
// with p payload blocks (MS-VHDX §2.5): a sector bitmap entry after every
// ratio payload entries, none trailing.
func batEntries(p, ratio int64) int64 {
	if p == 0 {
		return 0
	}
	return p + (p-1)/ratio
}
