package vhdx

import (
	"encoding/binary"
	"hash/crc32"
)

// header is the VHDX header (MS-VHDX §2.2.2): 4 KiB at 64 KiB and 128 KiB,
// little-endian, the CRC-32C at 4 computed with the field zeroed.
//
//	0 Signature "head"   4 Checksum   8 SequenceNumber
//	16 FileWriteGuid   32 DataWriteGuid   48 LogGuid
//	64 LogVersion (0)   66 Version (1)   68 LogLength   72 LogOffset
type header struct {
	Seq                       uint64
	FileWrite, DataWrite, Log GUID
	LogVersion, Version       uint16
	LogLength                 uint32
	LogOffset                 uint64
}

const (
	hdrChecksum   = 4
	hdrSeq        = 8
	hdrFileWrite  = 16
	hdrDataWrite  = 32
	hdrLogGUID    = 48
	hdrLogVersion = 64
	hdrVersion    = 66
	hdrLogLength  = 68
	hdrLogOffset  = 72
	hdrEnd        = 80
)

// marshal returns the 4 KiB header with its checksum.
func (h *header) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, sigHeader[:])
	le := binary.LittleEndian
	le.PutUint64(b[hdrSeq:], h.Seq)
	copy(b[hdrFileWrite:], h.FileWrite[:])
	copy(b[hdrDataWrite:], h.DataWrite[:])
	copy(b[hdrLogGUID:], h.Log[:])
	le.PutUint16(b[hdrLogVersion:], h.LogVersion)
	le.PutUint16(b[hdrVersion:], h.Version)
	le.PutUint32(b[hdrLogLength:], h.LogLength)
	le.PutUint64(b[hdrLogOffset:], h.LogOffset)
	le.PutUint32(b[hdrChecksum:], checksum(b, hdrChecksum))
	return b
}

// parseHeader decodes a header block of headerSize bytes at file offset
// off; name is "header 1" or "header 2".
func parseHeader(b []byte, name string, off int64) (*header, error) {
	if len(b) < headerSize {
		return nil, errf(ErrCorrupt, name, "", off, "short read (%d bytes)", len(b))
	}
	b = b[:headerSize]
	if [4]byte(b[:4]) != sigHeader {
		return nil, errf(ErrCorrupt, name, "Signature", off, "%q, want \"head\"", b[:4])
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(b[hdrChecksum:]), checksum(b, hdrChecksum); got != want {
		return nil, errf(ErrCorrupt, name, "Checksum", off, "CRC-32C 0x%08x, computed 0x%08x", got, want)
	}
	h := &header{
		Seq:        le.Uint64(b[hdrSeq:]),
		FileWrite:  GUID(b[hdrFileWrite:]),
		DataWrite:  GUID(b[hdrDataWrite:]),
		Log:        GUID(b[hdrLogGUID:]),
		LogVersion: le.Uint16(b[hdrLogVersion:]),
		Version:    le.Uint16(b[hdrVersion:]),
		LogLength:  le.Uint32(b[hdrLogLength:]),
		LogOffset:  le.Uint64(b[hdrLogOffset:]),
	}
	if h.Version != 1 {
		return nil, errf(ErrUnsupported, name, "Version", off, "%d, want 1", h.Version)
	}
	return h, nil
}

// checksum returns the CRC-32C of b computed with the 4 bytes at field
// taken as zero, without modifying b.
func checksum(b []byte, field int) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:field])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[field+4:])
}

// regionEntry is one entry of a region table (MS-VHDX §2.2.3.2):
//
//	0 Guid   16 FileOffset u64   24 Length u32   28 Required (bit 0) u32
type regionEntry struct {
	ID       GUID
	Off      uint64
	Len      uint32
	Required bool
}

const (
	regionEntrySize = 32
	regionHdrSize   = 16 // 0 "regi"  4 Checksum  8 EntryCount  12 Reserved
	regionChecksum  = 4
	regionCount     = 8
)

// marshalRegionTable returns the full 64 KiB region table.
func marshalRegionTable(entries []regionEntry) []byte {
	b := make([]byte, regionTableSize)
	le := binary.LittleEndian
	copy(b, sigRegion[:])
	le.PutUint32(b[regionCount:], uint32(len(entries)))
	for i, e := range entries {
		p := b[regionHdrSize+i*regionEntrySize:]
		copy(p, e.ID[:])
		le.PutUint64(p[16:], e.Off)
		le.PutUint32(p[24:], e.Len)
		if e.Required {
			le.PutUint32(p[28:], 1)
		}
	}
	le.PutUint32(b[regionChecksum:], checksum(b, regionChecksum))
	return b
}

// parseRegionTable decodes a 64 KiB region table at file offset off.
func parseRegionTable(b []byte, name string, off int64) ([]regionEntry, error) {
	if len(b) < regionTableSize {
		return nil, errf(ErrCorrupt, name, "", off, "short read (%d bytes)", len(b))
	}
	b = b[:regionTableSize]
	if [4]byte(b[:4]) != sigRegion {
		return nil, errf(ErrCorrupt, name, "Signature", off, "%q, want \"regi\"", b[:4])
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(b[regionChecksum:]), checksum(b, regionChecksum); got != want {
		return nil, errf(ErrCorrupt, name, "Checksum", off, "CRC-32C 0x%08x, computed 0x%08x", got, want)
	}
	n := le.Uint32(b[regionCount:])
	if n > maxRegionEntries {
		return nil, errf(ErrCorrupt, name, "EntryCount", off, "%d entries, at most %d", n, maxRegionEntries)
	}
	out := make([]regionEntry, n)
	for i := range out {
		p := b[regionHdrSize+i*regionEntrySize:]
		out[i] = regionEntry{
			ID:       GUID(p[:16]),
			Off:      le.Uint64(p[16:]),
			Len:      le.Uint32(p[24:]),
			Required: le.Uint32(p[28:])&1 != 0,
		}
	}
	return out, nil
}

// metaEntry is one entry of the metadata table (MS-VHDX §2.6.1.2):
//
//	0 ItemId   16 Offset u32   20 Length u32   24 flags u32   28 Reserved
type metaEntry struct {
	ID    GUID
	Off   uint32 // from the start of the metadata region
	Len   uint32
	Flags uint32
}

const (
	metaEntrySize = 32
	metaHdrSize   = 32 // 0 "metadata"  8 Reserved u16  10 EntryCount u16  12 Reserved2[20]
	metaCount     = 10
)

// marshalMetaTable returns the metadata table header and entries (the rest
// of its 64 KiB is zero).
func marshalMetaTable(entries []metaEntry) []byte {
	b := make([]byte, metaHdrSize+len(entries)*metaEntrySize)
	le := binary.LittleEndian
	copy(b, sigMetadata[:])
	le.PutUint16(b[metaCount:], uint16(len(entries)))
	for i, e := range entries {
		p := b[metaHdrSize+i*metaEntrySize:]
		copy(p, e.ID[:])
		le.PutUint32(p[16:], e.Off)
		le.PutUint32(p[20:], e.Len)
		le.PutUint32(p[24:], e.Flags)
	}
	return b
}

// parseMetaTable decodes the metadata table at file offset off.
func parseMetaTable(b []byte, off int64) ([]metaEntry, error) {
	const name = "metadata table"
	if len(b) < metaHdrSize {
		return nil, errf(ErrCorrupt, name, "", off, "short read (%d bytes)", len(b))
	}
	if [8]byte(b[:8]) != sigMetadata {
		return nil, errf(ErrCorrupt, name, "Signature", off, "%q, want \"metadata\"", b[:8])
	}
	le := binary.LittleEndian
	n := int(le.Uint16(b[metaCount:]))
	if n > maxMetaEntries || metaHdrSize+n*metaEntrySize > len(b) {
		return nil, errf(ErrCorrupt, name, "EntryCount", off, "%d entries do not fit", n)
	}
	out := make([]metaEntry, n)
	for i := range out {
		p := b[metaHdrSize+i*metaEntrySize:]
		out[i] = metaEntry{ID: GUID(p[:16]), Off: le.Uint32(p[16:]), Len: le.Uint32(p[20:]), Flags: le.Uint32(p[24:])}
	}
	return out, nil
}
