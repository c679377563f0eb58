package vhdx

import (
	"crypto/sha256"
	"encoding/binary"
	"iter"
	"unicode/utf16"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Defaults of Options.
const (
	DefaultBlockSize          = 32 * mib
	DefaultLogicalSectorSize  = 512
	DefaultPhysicalSectorSize = 4096
	DefaultCreator            = "vmfs2vhd"
)

// Fixed placement of the regions this package writes.
const (
	logOff  = 1 * mib
	logLen  = 1 * mib
	metaOff = 2 * mib
	metaLen = 1 * mib
	batOff  = 3 * mib

	maxCreatorUnits = 256 // UTF-16 code units in the file identifier
)

// Options controls Plan. The zero value asks for the defaults.
type Options struct {
	// BlockSize is the payload block size: a power of two from 1 MiB to
	// 256 MiB; 0 means 32 MiB (Hyper-V's default).
	BlockSize int64
	// LogicalSectorSize is 512 or 4096; 0 means 512. The virtual size must
	// be a multiple of it.
	LogicalSectorSize int
	// PhysicalSectorSize is 512 or 4096; 0 means 4096 (as Hyper-V writes).
	PhysicalSectorSize int
	// Identity seeds the three GUIDs the file carries — the page 83 disk id,
	// FileWriteGuid and DataWriteGuid — each derived from it with SHA-256,
	// so that equal inputs give byte-identical files. Callers pass random
	// bytes per output disk: two attached disks must not share a page 83 id.
	Identity [16]byte
	// Creator is written into the file identifier; "" means "vmfs2vhd".
	Creator string
}

// withDefaults fills in defaults and validates o.
func (o Options) withDefaults() (Options, error) {
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.LogicalSectorSize == 0 {
		o.LogicalSectorSize = DefaultLogicalSectorSize
	}
	if o.PhysicalSectorSize == 0 {
		o.PhysicalSectorSize = DefaultPhysicalSectorSize
	}
	if o.Creator == "" {
		o.Creator = DefaultCreator
	}
	switch {
	case o.BlockSize < mib || o.BlockSize > 256*mib || o.BlockSize&(o.BlockSize-1) != 0:
		return o, errf(ErrInvalid, "options", "BlockSize", -1, "%d is not a power of two from 1 MiB to 256 MiB", o.BlockSize)
	case o.LogicalSectorSize != 512 && o.LogicalSectorSize != 4096:
		return o, errf(ErrInvalid, "options", "LogicalSectorSize", -1, "%d, want 512 or 4096", o.LogicalSectorSize)
	case o.PhysicalSectorSize != 512 && o.PhysicalSectorSize != 4096:
		return o, errf(ErrInvalid, "options", "PhysicalSectorSize", -1, "%d, want 512 or 4096", o.PhysicalSectorSize)
	case len(utf16.Encode([]rune(o.Creator))) > maxCreatorUnits:
		return o, errf(ErrInvalid, "options", "Creator", -1, "longer than %d UTF-16 code units", maxCreatorUnits)
	}
	return o, nil
}

// deriveGUID returns a version-4-shaped GUID (on-disk form) derived from
// the identity and a label.
func deriveGUID(identity [16]byte, label string) GUID {
	h := sha256.New()
	h.Write(identity[:])
	h.Write([]byte(label))
	var g GUID
	copy(g[:], h.Sum(nil))
	g[7] = g[7]&0x0f | 0x40 // version 4: high nibble of Data3 (little-endian)
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g
}

// blockRun is a run of payload blocks [start, end) that hold data, stored
// contiguously in the file from the base-th data block on.
type blockRun struct{ start, end, base int64 }

// plan is the Layout of one dynamic VHDX.
type plan struct {
	size, blockSize int64
	ratio           int64 // payload blocks per chunk
	blocks          int64 // payload blocks
	entries         int64 // BAT entries
	batLen          int64
	dataOff         int64
	runs            []blockRun
	data            []formats.Extent // the Data extents, in order
	fileSize        int64
	fixed           []formats.Piece // file identifier … metadata items
}

// Plan lays out a dynamic VHDX of virtual size size whose contents are
// described by extents: sorted, non-overlapping runs within [0, size) (gaps
// count as holes). Data extents are copied from the virtual disk; Zero and
// Hole extents cost nothing.
func Plan(size int64, extents []formats.Extent, opts Options) (formats.Layout, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if size <= 0 || size > MaxSize || size%int64(o.LogicalSectorSize) != 0 {
		return nil, errf(ErrInvalid, "options", "size", -1, "virtual size %d is not a positive multiple of %d up to 64 TiB", size, o.LogicalSectorSize)
	}
	if err := checkExtents(size, extents); err != nil {
		return nil, err
	}
	p := &plan{size: size, blockSize: o.BlockSize}
	p.ratio = chunkRatio(o.BlockSize, int64(o.LogicalSectorSize))
	p.blocks = (size + o.BlockSize - 1) / o.BlockSize
	p.entries = batEntries(p.blocks, p.ratio)
	p.batLen = (p.entries*8 + mib - 1) / mib * mib
	p.dataOff = batOff + p.batLen

	var nData int64
	for _, e := range extents {
		if e.Kind != formats.Data {
			continue
		}
		p.data = append(p.data, e)
		first, last := e.Off/o.BlockSize, (e.End()-1)/o.BlockSize
		if n := len(p.runs); n > 0 && p.runs[n-1].end > first {
			first = p.runs[n-1].end // the block shared with the previous extent
		}
		if first > last {
			continue
		}
		if n := len(p.runs); n > 0 && p.runs[n-1].end == first {
			p.runs[n-1].end = last + 1
		} else {
			p.runs = append(p.runs, blockRun{start: first, end: last + 1, base: nData})
		}
		nData += last + 1 - first
	}
	p.fileSize = p.dataOff + nData*o.BlockSize
	p.fixed = fixedPieces(size, o, p.batLen)
	return p, nil
}

// checkExtents verifies the extent list (formats.CheckExtents).
func checkExtents(size int64, extents []formats.Extent) error {
	if err := formats.CheckExtents(size, extents); err != nil {
		return errf(ErrInvalid, "extent list", "", -1, "%v", err)
	}
	return nil
}

// fixedPieces returns the file identifier, headers, region tables and
// metadata — everything before the BAT.
func fixedPieces(size int64, o Options, batLen int64) []formats.Piece {
	meta := func(off int64, b []byte) formats.Piece {
		return formats.Piece{Off: off, Len: int64(len(b)), Meta: b}
	}
	id := make([]byte, 8, 8+2*maxCreatorUnits)
	copy(id, sigFileID[:])
	for _, u := range utf16.Encode([]rune(o.Creator)) {
		id = binary.LittleEndian.AppendUint16(id, u)
	}

	h := header{
		FileWrite: deriveGUID(o.Identity, "FileWriteGuid"),
		DataWrite: deriveGUID(o.Identity, "DataWriteGuid"),
		Version:   1,
		LogLength: logLen,
		LogOffset: logOff,
	}
	h.Seq = 1
	h1 := h.marshal()
	h.Seq = 2
	h2 := h.marshal()

	rt := marshalRegionTable([]regionEntry{
		{ID: guidMetaRegion, Off: metaOff, Len: metaLen, Required: true},
		{ID: guidBAT, Off: batOff, Len: uint32(batLen), Required: true},
	})
	rt = rt[:regionHdrSize+2*regionEntrySize] // the rest is zero

	// Items follow the table at 64 KiB into the region, as Hyper-V lays
	// them out.
	le := binary.LittleEndian
	var items []byte
	var entries []metaEntry
	add := func(id GUID, flags uint32, v []byte) {
		entries = append(entries, metaEntry{ID: id, Off: uint32(metaTableSize + len(items)), Len: uint32(len(v)), Flags: flags})
		items = append(items, v...)
	}
	add(guidFileParams, metaIsRequired, le.AppendUint32(le.AppendUint32(nil, uint32(o.BlockSize)), 0))
	add(guidDiskSize, metaIsVirtualDisk|metaIsRequired, le.AppendUint64(nil, uint64(size)))
	add(guidLogicalSect, metaIsVirtualDisk|metaIsRequired, le.AppendUint32(nil, uint32(o.LogicalSectorSize)))
	add(guidPhysicalSect, metaIsVirtualDisk|metaIsRequired, le.AppendUint32(nil, uint32(o.PhysicalSectorSize)))
	page83 := deriveGUID(o.Identity, "Page83Data")
	add(guidPage83, metaIsVirtualDisk|metaIsRequired, page83[:])

	return []formats.Piece{
		meta(fileIDOff, id),
		meta(header1Off, h1),
		meta(header2Off, h2),
		meta(regionTab1Off, rt),
		meta(regionTab2Off, rt),
		meta(metaOff, marshalMetaTable(entries)),
		meta(metaOff+metaTableSize, items),
	}
}

func (p *plan) FileSize() int64 { return p.fileSize }

// batChunk is the number of BAT bytes emitted per piece.
const batChunk = mib

// Pieces yields the fixed structures, the BAT (in pieces of at most 1 MiB,
// computed on the fly) and one data piece per Data extent.
func (p *plan) Pieces() iter.Seq[formats.Piece] {
	return func(yield func(formats.Piece) bool) {
		for _, pc := range p.fixed {
			if !yield(pc) {
				return
			}
		}
		// BAT: payload block b is at entry b + b/ratio.
		ri := 0 // cursor into runs; blocks are visited in increasing order
		blockEntry := func(b int64) uint64 {
			for ri < len(p.runs) && p.runs[ri].end <= b {
				ri++
			}
			if ri < len(p.runs) && p.runs[ri].start <= b {
				r := p.runs[ri]
				return uint64(p.dataOff+(r.base+b-r.start)*p.blockSize) | stateFullyPresent
			}
			return stateZero
		}
		for e0 := int64(0); e0 < p.entries; e0 += batChunk / 8 {
			e1 := min(e0+batChunk/8, p.entries)
			buf := make([]byte, (e1-e0)*8)
			for i := e0; i < e1; i++ {
				if (i+1)%(p.ratio+1) == 0 {
					continue // sector bitmap entry: NOT_PRESENT in a dynamic disk
				}
				b := i - i/(p.ratio+1)
				binary.LittleEndian.PutUint64(buf[(i-e0)*8:], blockEntry(b))
			}
			if !yield(formats.Piece{Off: batOff + e0*8, Len: int64(len(buf)), Meta: buf}) {
				return
			}
		}
		// Data: every block an extent touches lies in one run, so the
		// extent is contiguous in the file.
		ri = 0
		for _, e := range p.data {
			b := e.Off / p.blockSize
			for p.runs[ri].end <= b {
				ri++
			}
			r := p.runs[ri]
			off := p.dataOff + (r.base+b-r.start)*p.blockSize + e.Off%p.blockSize
			if !yield(formats.Piece{Off: off, Len: e.Len, Src: e.Off}) {
				return
			}
		}
	}
}
