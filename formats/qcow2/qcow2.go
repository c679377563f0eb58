// Package qcow2 plans QEMU qcow2 images (version 3, "compat=1.1", or
// version 2, "compat=0.10") and reads them back.
//
// Plan is a pure function from a virtual size and an extent list to a
// formats.Layout; it does no I/O, so the same plan can be written into a
// seekable file (formats.WriteLayout) or down a pipe (formats.StreamLayout).
// All metadata comes first, so a stream needs no seeking back:
//
//	cluster 0            header (no extensions)
//	1 …                  refcount table
//	…                    refcount blocks (16-bit refcounts)
//	…                    L1 table
//	…                    L2 tables, one per L1 entry that maps a cluster
//	…                    data clusters, in virtual order
//
// Every cluster of the file is used exactly once, so every refcount is 1
// and every L1 and L2 entry that points at a cluster carries the COPIED
// flag. The refcount blocks must count their own clusters and those of
// the refcount table: their numbers are the smallest fixed point of
// blocks = ⌈clusters(blocks, table)/refcounts-per-block⌉ and
// table = ⌈blocks·8/cluster size⌉.
//
// A cluster that any Data extent touches is a data cluster (its bytes
// outside Data extents are zeros). In version 3 a cluster without data
// that touches a Zero extent is a zero-flag cluster (bit 0 of its L2
// entry, no host cluster); everything else, and in version 2 every cluster
// without data, is unallocated and reads as zero (no backing file).
//
// Open reads version 2 and 3 images without backing files, encryption,
// external data files, extended L2 entries or compressed clusters, and
// refuses those with ErrUnsupported naming the feature.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Header fields (QEMU docs/interop/qcow2.txt, "Header"); big-endian.
const (
	hMagic            = 0  // u32 "QFI\xfb"
	hVersion          = 4  // u32 2 or 3
	hBackingOffset    = 8  // u64
	hBackingSize      = 16 // u32
	hClusterBits      = 20 // u32
	hSize             = 24 // u64 virtual size
	hCryptMethod      = 32 // u32
	hL1Size           = 36 // u32 entries
	hL1Offset         = 40 // u64
	hRefcountOffset   = 48 // u64
	hRefcountClusters = 56 // u32
	hSnapshots        = 60 // u32
	hSnapshotsOffset  = 64 // u64
	hV2End            = 72
	hIncompatible     = 72  // u64 (v3)
	hCompatible       = 80  // u64
	hAutoclear        = 88  // u64
	hRefcountOrder    = 96  // u32
	hHeaderLength     = 100 // u32
	hCompressionType  = 104 // u8
	hV3Length         = 112 // what this package writes (qemu does too)
)

const magic = 0x514649fb // "QFI\xfb"

// Incompatible feature bits (v3).
const (
	incDirty         = 1 << 0
	incCorrupt       = 1 << 1
	incExternalData  = 1 << 2
	incCompression   = 1 << 3
	incExtendedL2    = 1 << 4
	incKnown         = incDirty | incCorrupt | incExternalData | incCompression | incExtendedL2
	minClusterBits   = 9
	maxClusterBits   = 21
	refcountOrder16  = 4
	maxL1Bytes       = 32 << 20 // qemu's QCOW_MAX_L1_SIZE
	maxRefTableBytes = 8 << 20  // qemu's QCOW_MAX_REFTABLE_SIZE
)

// L1 and L2 entry bits.
const (
	flagCopied     = uint64(1) << 63
	flagCompressed = uint64(1) << 62
	flagZero       = uint64(1)                  // L2, v3: reads as zero
	offsetMask     = uint64(0x00fffffffffffe00) // bits 9–55
	l1Reserved     = uint64(0x7f000000000001fe) // bits 1–8 and 56–62
	l2Reserved     = uint64(0x3f000000000001fe) // bits 1–8 and 56–61 (standard clusters)
)

// Sentinel errors; every error from this package unwraps to one of them.
var (
	// ErrCorrupt: a structure is malformed or points outside the file.
	ErrCorrupt = errors.New("corrupt qcow2")
	// ErrUnsupported: a valid image using a feature this package does not
	// read (backing file, encryption, compression, external data file,
	// extended L2 entries, unknown incompatible features).
	ErrUnsupported = errors.New("unsupported qcow2 feature")
	// ErrInvalid: Plan was given options or extents it cannot honour.
	ErrInvalid = errors.New("invalid qcow2 plan input")
)

// Error describes a problem with one field of one structure. Off is the
// absolute byte offset of the structure (or of the field) in the file, or
// -1 when the problem is not in a file (Plan input).
type Error struct {
	Struct string // "header", "L1 entry 3", "L2 entry 17 of table at 0x50000", "options"…
	Field  string
	Off    int64
	Detail string
	Err    error // a sentinel
}

func (e *Error) Error() string {
	s := "qcow2: " + e.Struct
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

// header holds the fields of a qcow2 header this package reads or writes.
type header struct {
	Version          uint32
	BackingOffset    uint64
	BackingSize      uint32
	ClusterBits      uint32
	Size             uint64
	CryptMethod      uint32
	L1Size           uint32
	L1Offset         uint64
	RefcountOffset   uint64
	RefcountClusters uint32
	Snapshots        uint32
	SnapshotsOffset  uint64
	Incompatible     uint64
	Compatible       uint64
	Autoclear        uint64
	RefcountOrder    uint32
	HeaderLength     uint32
}

// marshal returns the header bytes (72 for v2, 112 for v3); the header
// extension area that follows is left zero, which ends it.
func (h *header) marshal() []byte {
	n := hV2End
	if h.Version >= 3 {
		n = hV3Length
	}
	b := make([]byte, n)
	be := binary.BigEndian
	be.PutUint32(b[hMagic:], magic)
	be.PutUint32(b[hVersion:], h.Version)
	be.PutUint64(b[hBackingOffset:], h.BackingOffset)
	be.PutUint32(b[hBackingSize:], h.BackingSize)
	be.PutUint32(b[hClusterBits:], h.ClusterBits)
	be.PutUint64(b[hSize:], h.Size)
	be.PutUint32(b[hCryptMethod:], h.CryptMethod)
	be.PutUint32(b[hL1Size:], h.L1Size)
	be.PutUint64(b[hL1Offset:], h.L1Offset)
	be.PutUint64(b[hRefcountOffset:], h.RefcountOffset)
	be.PutUint32(b[hRefcountClusters:], h.RefcountClusters)
	be.PutUint32(b[hSnapshots:], h.Snapshots)
	be.PutUint64(b[hSnapshotsOffset:], h.SnapshotsOffset)
	if h.Version >= 3 {
		be.PutUint64(b[hIncompatible:], h.Incompatible)
		be.PutUint64(b[hCompatible:], h.Compatible)
		be.PutUint64(b[hAutoclear:], h.Autoclear)
		be.PutUint32(b[hRefcountOrder:], h.RefcountOrder)
		be.PutUint32(b[hHeaderLength:], uint32(n))
	}
	return b
}

// parseHeader decodes the header at the start of b (at least 72 bytes; 104
// for version 3).
func parseHeader(b []byte) (*header, error) {
	if len(b) < hV2End {
		return nil, errf(ErrCorrupt, "header", "", 0, "file too short (%d bytes)", len(b))
	}
	be := binary.BigEndian
	if m := be.Uint32(b[hMagic:]); m != magic {
		return nil, errf(ErrCorrupt, "header", "magic", hMagic, "0x%08x, want \"QFI\\xfb\"", m)
	}
	h := &header{
		Version:          be.Uint32(b[hVersion:]),
		BackingOffset:    be.Uint64(b[hBackingOffset:]),
		BackingSize:      be.Uint32(b[hBackingSize:]),
		ClusterBits:      be.Uint32(b[hClusterBits:]),
		Size:             be.Uint64(b[hSize:]),
		CryptMethod:      be.Uint32(b[hCryptMethod:]),
		L1Size:           be.Uint32(b[hL1Size:]),
		L1Offset:         be.Uint64(b[hL1Offset:]),
		RefcountOffset:   be.Uint64(b[hRefcountOffset:]),
		RefcountClusters: be.Uint32(b[hRefcountClusters:]),
		Snapshots:        be.Uint32(b[hSnapshots:]),
		SnapshotsOffset:  be.Uint64(b[hSnapshotsOffset:]),
		RefcountOrder:    refcountOrder16,
		HeaderLength:     hV2End,
	}
	switch h.Version {
	case 2:
	case 3:
		if len(b) < hHeaderLength+4 {
			return nil, errf(ErrCorrupt, "header", "header_length", hHeaderLength, "version 3 header cut short (%d bytes)", len(b))
		}
		h.Incompatible = be.Uint64(b[hIncompatible:])
		h.Compatible = be.Uint64(b[hCompatible:])
		h.Autoclear = be.Uint64(b[hAutoclear:])
		h.RefcountOrder = be.Uint32(b[hRefcountOrder:])
		h.HeaderLength = be.Uint32(b[hHeaderLength:])
		if h.HeaderLength < 104 || h.HeaderLength%8 != 0 {
			return nil, errf(ErrCorrupt, "header", "header_length", hHeaderLength, "%d, want a multiple of 8 from 104", h.HeaderLength)
		}
	default:
		return nil, errf(ErrUnsupported, "header", "version", hVersion, "version %d, want 2 or 3", h.Version)
	}
	return h, nil
}
