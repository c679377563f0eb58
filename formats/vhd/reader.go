package vhd

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Limits on values read from disk, beyond the file-size bounds.
const (
	maxBlockSize = 256 << 20 // largest dynamic block size accepted
)

// Image is a fixed or dynamic VHD opened for reading. It implements
// formats.Image; ReadAt and Extent are safe for concurrent use.
type Image struct {
	r        io.ReaderAt
	fileSize int64
	info     Info
	size     int64

	// dynamic disks
	bat        []uint32
	blockSize  int64
	bitmapSize int64
	// full caches, per block, what its bitmap holds: bitmapUnknown,
	// bitmapFull (every sector present: no need to read it again) or
	// bitmapPartial.
	full []atomic.Int32
}

const (
	bitmapUnknown = iota
	bitmapFull
	bitmapPartial
)

// Info is what the footer (and the dynamic header) of an opened VHD record.
type Info struct {
	Dynamic        bool
	CreatorApp     string // 4 bytes as recorded, e.g. "win ", "vpc ", "d2v\x00"
	CreatorVersion uint32
	CreatorHost    string
	Time           time.Time
	UUID           [16]byte
	OriginalSize   int64
	CurrentSize    int64    // the size Image reports
	Geometry       Geometry // Geometry.Size() is what Virtual PC would report
	BlockSize      int64    // dynamic only
	BlockCount     int      // dynamic only: BAT entries
	Allocated      int      // dynamic only: allocated blocks
	FooterAt       int64    // file offset of the footer that was used
}

// Open reads the VHD in the first size bytes of r. It validates the footer
// (cookie, checksum, disk type, sizes) and, for a dynamic disk, the dynamic
// header and every BAT entry against the file size, so that reads cannot go
// outside the file; memory use is bounded by the file size.
//
// The footer is taken from the end of the file; a 511-byte footer (written
// by Virtual PC before 2004) is accepted, and when the end holds no footer a
// dynamic disk's copy at offset 0 is used, as qemu does.
//
// The reported size is the footer's current size, as Hyper-V, Azure and
// libvhdi report it, also for disks made by Virtual PC (creator "vpc "),
// for which qemu reports Geometry.Size() instead (see Info).
//
// Differencing disks are refused with an error wrapping ErrUnsupported;
// invalid structures with errors wrapping ErrCorrupt that name the
// structure, the field and its file offset.
func Open(r io.ReaderAt, size int64) (*Image, error) {
	if size < 0 {
		return nil, &Error{Struct: "file", Field: "size", Off: -1, Msg: fmt.Sprintf("%d bytes", size), Err: ErrInvalid}
	}
	m := &Image{r: r, fileSize: size}
	f, at, err := m.findFooter()
	if err != nil {
		return nil, err
	}
	m.info.FooterAt = at
	if err := m.parseFooter(f, at); err != nil {
		return nil, err
	}
	if m.info.Dynamic {
		if err := m.openDynamic(f, at); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// findFooter locates and checks the footer: at size-512, at size-511, or at
// 0 (the copy of a dynamic disk).
func (m *Image) findFooter() (*footer, int64, error) {
	if m.fileSize < FooterSize-1 {
		return nil, 0, corrupt("footer", 0, "", "file of %d bytes is too small for a VHD footer", m.fileSize)
	}
	var f footer
	var firstErr error
	for _, at := range []int64{m.fileSize - FooterSize, m.fileSize - (FooterSize - 1), 0} {
		if at < 0 {
			continue
		}
		n := int64(FooterSize)
		if at == m.fileSize-(FooterSize-1) {
			n = FooterSize - 1
		}
		clear(f[:])
		if err := readFull(m.r, f[:n], at); err != nil {
			return nil, 0, &Error{Struct: "footer", Off: at, Msg: err.Error(), Err: ErrCorrupt}
		}
		if string(f.cookie()) != cookieFooter {
			if firstErr == nil {
				firstErr = corrupt("footer", at, "cookie", "%q, want %q", f.cookie(), cookieFooter)
			}
			continue
		}
		if got, want := be.Uint32(f.checksum()), checksum(f[:], footerChecksumOff); got != want {
			return nil, 0, corrupt("footer", at+footerChecksumOff, "checksum", "0x%08x, computed 0x%08x", got, want)
		}
		if at == 0 && at != m.fileSize-FooterSize && be.Uint32(f.diskType()) == typeFixed {
			// A fixed disk has no footer copy: offset 0 is disk data.
			break
		}
		return &f, at, nil
	}
	return nil, 0, firstErr
}

func (m *Image) parseFooter(f *footer, at int64) error {
	in := &m.info
	in.CreatorApp = string(f.creatorApp())
	in.CreatorVersion = be.Uint32(f.creatorVersion())
	in.CreatorHost = string(f.creatorHost())
	in.Time = epoch.Add(time.Duration(be.Uint32(f.timestamp())) * time.Second)
	copy(in.UUID[:], f.uniqueID())
	in.Geometry = geometryFrom(f.geometry())
	orig, cur := be.Uint64(f.originalSize()), be.Uint64(f.currentSize())
	if cur > 1<<62 {
		return corrupt("footer", at+48, "current size", "%d bytes", cur)
	}
	in.OriginalSize = int64(min(orig, 1<<62))
	in.CurrentSize = int64(cur)
	m.size = in.CurrentSize

	switch t := be.Uint32(f.diskType()); t {
	case typeFixed:
		if at != m.fileSize-FooterSize && at != m.fileSize-(FooterSize-1) {
			return corrupt("footer", at+60, "disk type", "fixed disk without a footer at the end of the file")
		}
		if m.size > at {
			return corrupt("footer", at+48, "current size", "%d bytes, but the file holds only %d bytes of data", m.size, at)
		}
	case typeDynamic:
		in.Dynamic = true
	case typeDifferencing:
		return &Error{Struct: "footer", Field: "disk type", Off: at + 60, Msg: "differencing disk (needs its parent)", Err: ErrUnsupported}
	default:
		return corrupt("footer", at+60, "disk type", "%d", t)
	}
	return nil
}

func (m *Image) openDynamic(f *footer, at int64) error {
	hoff := be.Uint64(f.dataOffset())
	if hoff > uint64(m.fileSize) || int64(hoff) > m.fileSize-HeaderSize {
		return corrupt("footer", at+16, "data offset", "dynamic header at %d does not fit in a %d-byte file", hoff, m.fileSize)
	}
	off := int64(hoff)
	var h dynHeader
	if err := readFull(m.r, h[:], off); err != nil {
		return &Error{Struct: "dynamic header", Off: off, Msg: err.Error(), Err: ErrCorrupt}
	}
	if string(h.cookie()) != cookieHeader {
		return corrupt("dynamic header", off, "cookie", "%q, want %q", h.cookie(), cookieHeader)
	}
	if got, want := be.Uint32(h.checksum()), checksum(h[:], headerChecksumOff); got != want {
		return corrupt("dynamic header", off+headerChecksumOff, "checksum", "0x%08x, computed 0x%08x", got, want)
	}
	bs := int64(be.Uint32(h.blockSize()))
	if bs < SectorSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return corrupt("dynamic header", off+headerBlockSizeOff, "block size", "%d is not a power of two in [512, %d]", bs, maxBlockSize)
	}
	n := int64(be.Uint32(h.maxEntries()))
	if n*bs < m.size {
		return corrupt("dynamic header", off+headerMaxEntriesOff, "max table entries",
			"%d entries of %d bytes cover less than the current size %d", n, bs, m.size)
	}
	toff := be.Uint64(h.tableOffset())
	if toff > uint64(m.fileSize) || n*4 > m.fileSize-int64(toff) {
		return corrupt("dynamic header", off+headerTableOff, "table offset",
			"BAT of %d entries at %d does not fit in a %d-byte file", n, toff, m.fileSize)
	}
	tabOff := int64(toff)
	raw := make([]byte, n*4) // bounded by the file size above
	if err := readFull(m.r, raw, tabOff); err != nil {
		return &Error{Struct: "BAT", Off: tabOff, Msg: err.Error(), Err: ErrCorrupt}
	}
	m.blockSize = bs
	m.bitmapSize = roundUp(bs/SectorSize/8, SectorSize)
	m.bat = make([]uint32, n)
	for i := range m.bat {
		e := be.Uint32(raw[4*i:])
		m.bat[i] = e
		if e == batUnused {
			continue
		}
		// The block's bitmap and data must lie inside the file.
		start := int64(e) * SectorSize
		if start > m.fileSize-m.bitmapSize-bs {
			return corrupt("BAT", tabOff+4*int64(i), fmt.Sprintf("entry %d", i),
				"block at %d (bitmap %d + data %d bytes) ends past the end of the %d-byte file", start, m.bitmapSize, bs, m.fileSize)
		}
		m.info.Allocated++
	}
	m.full = make([]atomic.Int32, n)
	m.info.BlockSize = bs
	m.info.BlockCount = int(n)
	return nil
}

// Info returns what the VHD's footer and header record.
func (m *Image) Info() Info { return m.info }

// Size returns the virtual size: the footer's current size.
func (m *Image) Size() int64 { return m.size }

// ReadAt reads virtual-disk bytes. Unallocated blocks, and sectors whose
// bitmap bit is clear, read as zeros.
func (m *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &Error{Struct: "read", Off: -1, Msg: fmt.Sprintf("negative offset %d", off), Err: ErrInvalid}
	}
	if off >= m.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > m.size-off {
		p = p[:m.size-off]
	}
	var err error
	if m.bat == nil {
		err = readFull(m.r, p, off)
	} else {
		err = m.readDynamic(p, off)
	}
	if err != nil {
		return 0, err
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

func (m *Image) readDynamic(p []byte, off int64) error {
	var bitmap []byte
	for len(p) > 0 {
		b := off / m.blockSize
		in := off - b*m.blockSize
		n := min(int64(len(p)), m.blockSize-in)
		base := int64(m.bat[b]) * SectorSize
		switch {
		case m.bat[b] == batUnused:
			clear(p[:n])
		case m.full[b].Load() == bitmapFull:
			if err := m.readBlock(p[:n], b, base, in); err != nil {
				return err
			}
		default:
			if bitmap == nil {
				bitmap = make([]byte, m.bitmapSize)
			}
			if err := m.readBitmap(bitmap, b); err != nil {
				return err
			}
			// Copy runs of present sectors, zero the others.
			for pos := in; pos < in+n; {
				present := bit(bitmap, pos/SectorSize)
				end := runEnd(bitmap, pos/SectorSize, in+n, present)
				q := p[pos-in : end-in]
				if present {
					if err := m.readBlock(q, b, base, pos); err != nil {
						return err
					}
				} else {
					clear(q)
				}
				pos = end
			}
		}
		p = p[n:]
		off += n
	}
	return nil
}

// readBlock reads p from offset in of block b, whose bitmap is at base.
func (m *Image) readBlock(p []byte, b, base, in int64) error {
	if err := readFull(m.r, p, base+m.bitmapSize+in); err != nil {
		return &Error{Struct: "block", Field: fmt.Sprintf("block %d", b), Off: base + m.bitmapSize + in, Msg: err.Error(), Err: ErrCorrupt}
	}
	return nil
}

// readBitmap reads the sector bitmap of allocated block b into bitmap and
// records whether it is full.
func (m *Image) readBitmap(bitmap []byte, b int64) error {
	base := int64(m.bat[b]) * SectorSize
	if err := readFull(m.r, bitmap, base); err != nil {
		return &Error{Struct: "block bitmap", Field: fmt.Sprintf("block %d", b), Off: base, Msg: err.Error(), Err: ErrCorrupt}
	}
	state := int32(bitmapFull)
	for s := int64(0); s < m.blockSize/SectorSize; s += 8 {
		if bitmap[s/8] != 0xFF {
			state = bitmapPartial
			break
		}
	}
	m.full[b].Store(state)
	return nil
}

// Extent returns the run of one kind starting at off: Data for sectors
// present in allocated blocks (or anywhere in a fixed disk), Hole for
// unallocated blocks and sectors whose bitmap bit is clear. Runs end at
// block boundaries except across unallocated blocks.
func (m *Image) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= m.size {
		return formats.Extent{}, fmt.Errorf("vhd: extent at %d of a %d-byte disk: %w", off, m.size, formats.ErrOutOfRange)
	}
	if m.bat == nil {
		return formats.Extent{Off: off, Len: m.size - off, Kind: formats.Data}, nil
	}
	b := off / m.blockSize
	if m.bat[b] == batUnused {
		end := b + 1
		for end < int64(len(m.bat)) && m.bat[end] == batUnused && end*m.blockSize < m.size {
			end++
		}
		return formats.Extent{Off: off, Len: min(end*m.blockSize, m.size) - off, Kind: formats.Hole}, nil
	}
	in := off - b*m.blockSize
	limit := min(m.blockSize, m.size-b*m.blockSize)
	if m.full[b].Load() == bitmapFull {
		return formats.Extent{Off: off, Len: limit - in, Kind: formats.Data}, nil
	}
	bitmap := make([]byte, m.bitmapSize)
	if err := m.readBitmap(bitmap, b); err != nil {
		return formats.Extent{}, err
	}
	present := bit(bitmap, in/SectorSize)
	end := runEnd(bitmap, in/SectorSize, limit, present)
	kind := formats.Hole
	if present {
		kind = formats.Data
	}
	return formats.Extent{Off: off, Len: end - in, Kind: kind}, nil
}

// bit reports whether sector s of a block is present (MSB first).
func bit(bitmap []byte, s int64) bool { return bitmap[s/8]&(0x80>>(s%8)) != 0 }

// runEnd returns the block offset, at most limit, where the run of sectors
// with bit value v that contains sector s ends.
func runEnd(bitmap []byte, s, limit int64, v bool) int64 {
	full := byte(0)
	if v {
		full = 0xFF
	}
	for s++; s*SectorSize < limit; s++ {
		if s%8 == 0 {
			for s*SectorSize+8*SectorSize <= limit && bitmap[s/8] == full {
				s += 8
			}
			if s*SectorSize >= limit {
				break
			}
		}
		if bit(bitmap, s) != v {
			return s * SectorSize
		}
	}
	return limit
}

// readFull reads len(p) bytes at off; a short read is io.ErrUnexpectedEOF.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
