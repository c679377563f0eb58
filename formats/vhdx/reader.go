package vhdx

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Image is an open VHDX file; it implements formats.Image. Its methods are
// safe for concurrent use.
type Image struct {
	r              io.ReaderAt
	fileSize       int64
	size           int64
	blockSize      int64
	logicalSector  int64
	physicalSector int64
	ratio          int64
	diskID         GUID
	fixed          bool     // LeaveBlocksAllocated
	bat            []uint64 // payload entries only, one per block
	batOff         int64    // file offset of the BAT region
}

var _ formats.Image = (*Image)(nil)

// Open reads the VHDX file r of fileSize bytes: it verifies both headers and
// uses the current one, verifies the region table (falling back to the
// second copy), reads the metadata and the BAT, and checks every present
// block lies inside the file. It refuses a file whose log must be replayed
// (ErrDirtyLog) and differencing disks (ErrUnsupported).
func Open(r io.ReaderAt, fileSize int64) (*Image, error) {
	if fileSize < 3*mib {
		return nil, errf(ErrCorrupt, "file", "", 0, "%d bytes is too small for a VHDX", fileSize)
	}
	var id [8]byte
	if err := readAt(r, id[:], fileIDOff, "file identifier"); err != nil {
		return nil, err
	}
	if id != sigFileID {
		return nil, errf(ErrCorrupt, "file identifier", "Signature", fileIDOff, "%q, want \"vhdxfile\"", id[:])
	}

	// Headers: the valid one with the larger sequence number is current.
	var cur *header
	var curOff int64
	var firstErr error
	for i, off := range []int64{header1Off, header2Off} {
		name := fmt.Sprintf("header %d", i+1)
		b := make([]byte, headerSize)
		if err := readAt(r, b, off, name); err != nil {
			return nil, err
		}
		h, err := parseHeader(b, name, off)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if cur == nil || h.Seq > cur.Seq {
			cur, curOff = h, off
		}
	}
	if cur == nil {
		return nil, firstErr
	}
	if cur.Log != (GUID{}) {
		return nil, errf(ErrDirtyLog, fmt.Sprintf("header %d", curOff/header1Off), "LogGuid", curOff, "%v: the log holds writes that must be replayed first", cur.Log)
	}

	// Region table, first copy or else the second.
	var regions []regionEntry
	var rtErr error
	for i, off := range []int64{regionTab1Off, regionTab2Off} {
		name := fmt.Sprintf("region table %d", i+1)
		b := make([]byte, regionTableSize)
		if err := readAt(r, b, off, name); err != nil {
			return nil, err
		}
		if regions, rtErr = parseRegionTable(b, name, off); rtErr == nil {
			break
		}
	}
	if rtErr != nil {
		return nil, rtErr
	}
	var bat, meta *regionEntry
	for i := range regions {
		e := &regions[i]
		entOff := int64(regionTab1Off + regionHdrSize + i*regionEntrySize)
		name := fmt.Sprintf("region table entry %d", i)
		switch e.ID {
		case guidBAT:
			bat = e
		case guidMetaRegion:
			meta = e
		default:
			if e.Required {
				return nil, errf(ErrUnsupported, name, "Guid", entOff, "unknown required region %v", e.ID)
			}
			continue
		}
		if e.Off < mib || e.Off%mib != 0 || e.Len == 0 || e.Len%mib != 0 || e.Off > uint64(fileSize) || uint64(e.Len) > uint64(fileSize)-e.Off {
			return nil, errf(ErrCorrupt, name, "FileOffset", entOff, "region [0x%x, +0x%x) is misaligned or beyond the %d-byte file", e.Off, e.Len, fileSize)
		}
	}
	if bat == nil || meta == nil {
		return nil, errf(ErrCorrupt, "region table", "", regionTab1Off, "no BAT or metadata region")
	}

	img := &Image{r: r, fileSize: fileSize}
	if err := img.readMetadata(int64(meta.Off), int64(meta.Len)); err != nil {
		return nil, err
	}
	if err := img.readBAT(int64(bat.Off), int64(bat.Len)); err != nil {
		return nil, err
	}
	return img, nil
}

// readMetadata parses the metadata region [off, off+n).
func (img *Image) readMetadata(off, n int64) error {
	tab := make([]byte, min(n, metaTableSize))
	if err := readAt(img.r, tab, off, "metadata table"); err != nil {
		return err
	}
	entries, err := parseMetaTable(tab, off)
	if err != nil {
		return err
	}
	items := map[GUID][]byte{}
	for i, e := range entries {
		entOff := off + metaHdrSize + int64(i)*metaEntrySize
		name := fmt.Sprintf("metadata entry %d", i)
		known := e.ID == guidFileParams || e.ID == guidDiskSize || e.ID == guidPage83 ||
			e.ID == guidLogicalSect || e.ID == guidPhysicalSect || e.ID == guidParentLoc
		if !known {
			if e.Flags&metaIsRequired != 0 {
				return errf(ErrUnsupported, name, "ItemId", entOff, "unknown required item %v", e.ID)
			}
			continue
		}
		if e.Off < metaTableSize || e.Len > 64*kib || int64(e.Off) > n-int64(e.Len) {
			return errf(ErrCorrupt, name, "Offset", entOff, "item [0x%x, +0x%x) outside the %d-byte region", e.Off, e.Len, n)
		}
		v := make([]byte, e.Len)
		if err := readAt(img.r, v, off+int64(e.Off), "metadata item "+e.ID.String()); err != nil {
			return err
		}
		items[e.ID] = v
	}
	item := func(id GUID, name string, n int) ([]byte, error) {
		v, ok := items[id]
		if !ok || len(v) < n {
			return nil, errf(ErrCorrupt, "metadata table", name, off, "required item missing or shorter than %d bytes", n)
		}
		return v, nil
	}
	le := binary.LittleEndian
	v, err := item(guidFileParams, "File Parameters", 8)
	if err != nil {
		return err
	}
	img.blockSize = int64(le.Uint32(v))
	flags := le.Uint32(v[4:])
	if img.blockSize < mib || img.blockSize > 256*mib || img.blockSize&(img.blockSize-1) != 0 {
		return errf(ErrCorrupt, "metadata item File Parameters", "BlockSize", off, "%d is not a power of two from 1 MiB to 256 MiB", img.blockSize)
	}
	if flags&paramHasParent != 0 || items[guidParentLoc] != nil {
		return errf(ErrUnsupported, "metadata item File Parameters", "HasParent", off, "differencing VHDX")
	}
	img.fixed = flags&paramLeaveBlocksAllocated != 0
	if v, err = item(guidLogicalSect, "Logical Sector Size", 4); err != nil {
		return err
	}
	img.logicalSector = int64(le.Uint32(v))
	if img.logicalSector != 512 && img.logicalSector != 4096 {
		return errf(ErrCorrupt, "metadata item Logical Sector Size", "LogicalSectorSize", off, "%d, want 512 or 4096", img.logicalSector)
	}
	if v, err = item(guidPhysicalSect, "Physical Sector Size", 4); err != nil {
		return err
	}
	img.physicalSector = int64(le.Uint32(v))
	if img.physicalSector != 512 && img.physicalSector != 4096 {
		return errf(ErrCorrupt, "metadata item Physical Sector Size", "PhysicalSectorSize", off, "%d, want 512 or 4096", img.physicalSector)
	}
	if v, err = item(guidDiskSize, "Virtual Disk Size", 8); err != nil {
		return err
	}
	size := le.Uint64(v)
	if size == 0 || size > MaxSize || size%uint64(img.logicalSector) != 0 {
		return errf(ErrCorrupt, "metadata item Virtual Disk Size", "VirtualDiskSize", off, "%d is not a positive multiple of %d up to 64 TiB", size, img.logicalSector)
	}
	img.size = int64(size)
	if v, err = item(guidPage83, "Page 83 Data", 16); err != nil {
		return err
	}
	img.diskID = GUID(v)
	img.ratio = chunkRatio(img.blockSize, img.logicalSector)
	return nil
}

// readBAT reads the BAT region [off, off+n) and keeps the payload entries.
func (img *Image) readBAT(off, n int64) error {
	blocks := (img.size + img.blockSize - 1) / img.blockSize
	entries := batEntries(blocks, img.ratio)
	if entries*8 > n {
		return errf(ErrCorrupt, "BAT region", "Length", off, "%d bytes hold fewer than the %d entries a %d-byte disk needs", n, entries, img.size)
	}
	raw := make([]byte, entries*8) // bounded: n lies within the file
	if err := readAt(img.r, raw, off, "BAT"); err != nil {
		return err
	}
	img.batOff = off
	img.bat = make([]uint64, blocks)
	for b := range blocks {
		i := b + b/img.ratio
		entOff := off + i*8
		v := binary.LittleEndian.Uint64(raw[i*8:])
		name := fmt.Sprintf("BAT entry %d (block %d)", i, b)
		switch v & batStateMask {
		case stateNotPresent, stateUndefined, stateZero, stateUnmapped, stateUnmappedV095:
		case stateFullyPresent:
			fo := int64(v & batOffsetMask)
			need := min(img.blockSize, img.size-b*img.blockSize)
			if fo < 3*mib || fo > img.fileSize-need {
				return errf(ErrCorrupt, name, "FileOffsetMB", entOff, "block at 0x%x lies outside the %d-byte file", fo, img.fileSize)
			}
		case statePartiallyPresent:
			return errf(ErrUnsupported, name, "State", entOff, "PARTIALLY_PRESENT block (differencing disk)")
		default:
			return errf(ErrCorrupt, name, "State", entOff, "reserved state %d", v&batStateMask)
		}
		img.bat[b] = v
	}
	return nil
}

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.size }

// BlockSize returns the payload block size.
func (img *Image) BlockSize() int64 { return img.blockSize }

// LogicalSectorSize returns the logical sector size (512 or 4096).
func (img *Image) LogicalSectorSize() int { return int(img.logicalSector) }

// PhysicalSectorSize returns the physical sector size (512 or 4096).
func (img *Image) PhysicalSectorSize() int { return int(img.physicalSector) }

// DiskID returns the page 83 disk identifier.
func (img *Image) DiskID() GUID { return img.diskID }

// kind maps a payload BAT entry to an extent kind. NOT_PRESENT and
// UNDEFINED blocks have no defined contents in this file (they read as
// zero here, the reading MS-VHDX allows); ZERO and UNMAPPED read as zero.
func kind(v uint64) formats.Kind {
	switch v & batStateMask {
	case stateFullyPresent:
		return formats.Data
	case stateZero, stateUnmapped, stateUnmappedV095:
		return formats.Zero
	}
	return formats.Hole
}

// Extent returns the run of one kind starting at off; it merges following
// blocks of the same kind.
func (img *Image) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= img.size {
		return formats.Extent{}, fmt.Errorf("vhdx: extent at %d of a %d-byte disk: %w", off, img.size, formats.ErrOutOfRange)
	}
	b := off / img.blockSize
	k := kind(img.bat[b])
	for b++; b < int64(len(img.bat)) && kind(img.bat[b]) == k; b++ {
	}
	return formats.Extent{Off: off, Len: min(b*img.blockSize, img.size) - off, Kind: k}, nil
}

// ReadAt reads virtual-disk bytes; blocks not present read as zeros.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vhdx: read at negative offset %d: %w", off, formats.ErrOutOfRange)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > img.size-off {
		p, eof = p[:img.size-off], io.EOF
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b, in := pos/img.blockSize, pos%img.blockSize
		k := min(int64(len(p)-n), img.blockSize-in)
		dst := p[n : n+int(k)]
		v := img.bat[b]
		if v&batStateMask == stateFullyPresent {
			fo := int64(v&batOffsetMask) + in
			m, err := img.r.ReadAt(dst, fo)
			if m < len(dst) {
				if err == nil || err == io.EOF {
					err = errf(ErrCorrupt, fmt.Sprintf("payload block %d", b), "", fo, "short read of %d bytes", len(dst))
				}
				return n + m, err
			}
		} else {
			clear(dst)
		}
		n += len(dst)
	}
	return n, eof
}

// readAt reads exactly len(b) bytes at off, naming the structure on error.
func readAt(r io.ReaderAt, b []byte, off int64, what string) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		return errf(ErrCorrupt, what, "", off, "file ends after %d of %d bytes", n, len(b))
	}
	return fmt.Errorf("vhdx: reading %s at 0x%x: %w", what, off, err)
}
