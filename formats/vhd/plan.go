package vhd

import (
	"crypto/rand"
	"fmt"
	"iter"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Options choose the kind of VHD Plan writes and the identity it records.
// The zero value plans a dynamic VHD with a random UUID and the current time.
type Options struct {
	// Fixed plans a fixed VHD (the disk's bytes followed by a footer)
	// instead of a dynamic one.
	Fixed bool
	// Azure plans a fixed VHD that Azure accepts for upload: the virtual
	// size is rounded up to a whole MiB and to at least AzureMinSize, and
	// may be as large as MaxAzureSize. Azure implies Fixed.
	Azure bool

	// CreatorApp is the footer's creator application, at most 4 bytes,
	// padded with NULs; "" means "win ". With an application that qemu
	// trusts to record the current size ("win ", "qem2", "d2v ", "CTXS",
	// "tap"), the geometry is the spec's CHS for the size; with any other,
	// Plan records MaxGeometry so that qemu still reads the exact size.
	CreatorApp string
	// CreatorVersion is the footer's creator version (major<<16 | minor);
	// 0 means 10.0, the version Windows 10 records with "win ".
	CreatorVersion uint32
	// UUID is the footer's unique id; all zero means a random (version 4)
	// UUID. Set it for reproducible output.
	UUID [16]byte
	// Time is the footer's timestamp; the zero Time means time.Now(). It
	// is clamped to the range a VHD timestamp can hold (2000–2136).
	Time time.Time
}

// Layout is a planned VHD file. It implements formats.Layout; its exported
// fields describe decisions the caller may want to report.
type Layout struct {
	// SourceSize is the size of the disk that was planned.
	SourceSize int64
	// Size is the virtual size recorded in the VHD (current and original
	// size). It differs from SourceSize when the source size is not a
	// multiple of 512 or, for Azure, of 1 MiB; the added tail reads as
	// zeros.
	Size int64
	// Geometry is the CHS geometry recorded in the footer.
	Geometry Geometry
	// Fixed reports a fixed (rather than dynamic) VHD.
	Fixed bool
	// Blocks is the number of allocated 2 MiB blocks of a dynamic VHD.
	Blocks int
	// Notes lists, in words, every adjustment Plan made (size rounding).
	Notes []string

	fileSize  int64
	footer    []byte           // FooterSize bytes
	header    []byte           // dynamic: HeaderSize bytes
	bat       []byte           // dynamic: the BAT padded to a sector with 0xFF
	firstData int64            // dynamic: file offset of the first block's data
	runs      []formats.Extent // the Data runs of the source, merged and in order
}

// Block layout of dynamic disks: each block is its 512-byte sector bitmap
// followed by BlockSize bytes of data. Plan aligns every block's data to
// 4 KiB (the bitmap fills the last sector of the 4 KiB before it), as
// Windows does, so blocks are blockStride apart.
const (
	bitmapSize  = BlockSize / SectorSize / 8 // 512: one bit per sector
	dataAlign   = 4096
	blockStride = BlockSize + dataAlign
	headerOff   = FooterSize             // dynamic header right after the footer copy
	batOff      = headerOff + HeaderSize // BAT right after the dynamic header (1536)
)

// allOnes is the sector bitmap of every block Plan allocates: all sectors
// present. It is shared by all pieces and must not be modified.
var allOnes = func() []byte {
	b := make([]byte, bitmapSize)
	for i := range b {
		b[i] = 0xFF
	}
	return b
}()

// Plan computes the VHD file for a virtual disk of size bytes whose runs are
// extents: in increasing order, not overlapping, within [0, size); uncovered
// ranges count as holes. Only Data runs are copied. A dynamic VHD allocates
// exactly the 2 MiB blocks that intersect a Data run; Zero and Hole ranges
// elsewhere stay unallocated (BAT entry 0xFFFFFFFF) and read as zeros.
//
// The footer records current size = original size = Layout.Size, which is
// size rounded up to a sector (and, for Azure, to whole MiB), and a creator
// and geometry that Hyper-V, Azure, libvhdi and qemu all read as that exact
// size (see Options.CreatorApp). Sizes beyond MaxSize (MaxAzureSize for
// Azure) are refused with an error wrapping ErrTooLarge; Plan has no side
// effects, so nothing is written.
func Plan(size int64, extents []formats.Extent, opts Options) (*Layout, error) {
	if size <= 0 {
		return nil, &Error{Struct: "disk", Field: "size", Off: -1, Msg: fmt.Sprintf("%d bytes", size), Err: ErrInvalid}
	}
	runs, err := dataRuns(size, extents)
	if err != nil {
		return nil, err
	}
	app, err := creatorApp(opts.CreatorApp)
	if err != nil {
		return nil, err
	}
	l := &Layout{SourceSize: size, Fixed: opts.Fixed || opts.Azure, runs: runs}

	limit := int64(MaxSize)
	l.Size = roundUp(size, SectorSize)
	if opts.Azure {
		limit = MaxAzureSize
		l.Size = max(roundUp(size, 1<<20), AzureMinSize)
	}
	if size > limit || l.Size > limit {
		return nil, &Error{Struct: "disk", Field: "size", Off: -1,
			Msg: fmt.Sprintf("%d bytes exceeds the limit of %d bytes", size, limit), Err: ErrTooLarge}
	}
	if l.Size != size {
		why := "a whole number of 512-byte sectors"
		if opts.Azure {
			why = fmt.Sprintf("a whole number of MiB, at least %d MiB, as Azure requires", AzureMinSize>>20)
		}
		l.Notes = append(l.Notes, fmt.Sprintf("virtual size rounded up from %d to %d bytes (%s); the added %d bytes read as zeros",
			size, l.Size, why, l.Size-size))
	}

	l.Geometry = MaxGeometry
	if trustsCurrentSize(app) {
		l.Geometry = GeometryFor(l.Size)
	}

	var f footer
	copy(f.cookie(), cookieFooter)
	be.PutUint32(f.features(), featureReserved)
	be.PutUint32(f.version(), formatVersion)
	be.PutUint32(f.timestamp(), timestamp(opts.Time))
	copy(f.creatorApp(), app[:])
	ver := opts.CreatorVersion
	if ver == 0 {
		ver = 10 << 16
	}
	be.PutUint32(f.creatorVersion(), ver)
	copy(f.creatorHost(), "Wi2k")
	be.PutUint64(f.originalSize(), uint64(l.Size))
	be.PutUint64(f.currentSize(), uint64(l.Size))
	l.Geometry.put(f.geometry())
	id := opts.UUID
	if id == [16]byte{} {
		if _, err := rand.Read(id[:]); err != nil {
			return nil, &Error{Struct: "footer", Field: "unique id", Off: -1, Msg: err.Error(), Err: ErrInvalid}
		}
		id[6] = id[6]&0x0F | 0x40 // version 4
		id[8] = id[8]&0x3F | 0x80 // RFC 4122 variant
	}
	copy(f.uniqueID(), id[:])

	if l.Fixed {
		be.PutUint64(f.dataOffset(), noOffset)
		be.PutUint32(f.diskType(), typeFixed)
		be.PutUint32(f.checksum(), checksum(f[:], footerChecksumOff))
		l.footer = f[:]
		l.fileSize = l.Size + FooterSize
		return l, nil
	}

	be.PutUint64(f.dataOffset(), headerOff)
	be.PutUint32(f.diskType(), typeDynamic)
	be.PutUint32(f.checksum(), checksum(f[:], footerChecksumOff))
	l.footer = f[:]

	// maxTableEntries must be exactly ceil(size / block size): Azure
	// rejects a longer BAT (qemu ecdb0d5).
	entries := (l.Size + BlockSize - 1) / BlockSize
	var h dynHeader
	copy(h.cookie(), cookieHeader)
	be.PutUint64(h.dataOffset(), noOffset)
	be.PutUint64(h.tableOffset(), batOff)
	be.PutUint32(h.version(), formatVersion)
	be.PutUint32(h.maxEntries(), uint32(entries))
	be.PutUint32(h.blockSize(), BlockSize)
	be.PutUint32(h.checksum(), checksum(h[:], headerChecksumOff))
	l.header = h[:]

	l.bat = make([]byte, roundUp(entries*4, SectorSize))
	for i := range l.bat {
		l.bat[i] = 0xFF
	}
	l.firstData = roundUp(batOff+int64(len(l.bat))+bitmapSize, dataAlign)
	end := batOff + int64(len(l.bat))
	for b := range l.blocks() {
		bitmap := l.firstData + int64(l.Blocks)*blockStride - bitmapSize
		if bitmap/SectorSize > batUnused-1 {
			return nil, &Error{Struct: "BAT", Field: fmt.Sprintf("entry %d", b), Off: batOff + 4*b,
				Msg: fmt.Sprintf("block at file offset %d is beyond what a BAT entry can address", bitmap), Err: ErrTooLarge}
		}
		be.PutUint32(l.bat[4*b:], uint32(bitmap/SectorSize))
		end = bitmap + bitmapSize + BlockSize
		l.Blocks++
	}
	l.fileSize = end + FooterSize
	return l, nil
}

// FileSize returns the size of the planned VHD file.
func (l *Layout) FileSize() int64 { return l.fileSize }

// Pieces yields the planned file in increasing offset: for a fixed VHD the
// Data runs at their virtual offsets and the footer; for a dynamic VHD the
// footer copy, the dynamic header, the BAT, then for each allocated block in
// disk order its sector bitmap and the Data runs inside it, and the footer.
// Bytes between pieces are zeros. Meta slices are shared and must not be
// modified.
func (l *Layout) Pieces() iter.Seq[formats.Piece] {
	return func(yield func(formats.Piece) bool) {
		if l.Fixed {
			for _, r := range l.runs {
				if !yield(formats.Piece{Off: r.Off, Len: r.Len, Src: r.Off}) {
					return
				}
			}
			yield(formats.Piece{Off: l.Size, Len: FooterSize, Meta: l.footer})
			return
		}
		if !yield(formats.Piece{Off: 0, Len: FooterSize, Meta: l.footer}) ||
			!yield(formats.Piece{Off: headerOff, Len: HeaderSize, Meta: l.header}) ||
			!yield(formats.Piece{Off: batOff, Len: int64(len(l.bat)), Meta: l.bat}) {
			return
		}
		k, j := int64(0), 0
		for b := range l.blocks() {
			data := l.firstData + k*blockStride
			if !yield(formats.Piece{Off: data - bitmapSize, Len: bitmapSize, Meta: allOnes}) {
				return
			}
			start := b * BlockSize
			end := min(start+BlockSize, l.SourceSize)
			for ; j < len(l.runs) && l.runs[j].Off < end; j++ {
				s, e := max(l.runs[j].Off, start), min(l.runs[j].End(), end)
				if !yield(formats.Piece{Off: data + s - start, Len: e - s, Src: s}) {
					return
				}
				if l.runs[j].End() > end {
					break // the run continues in the next block
				}
			}
			k++
		}
		yield(formats.Piece{Off: l.fileSize - FooterSize, Len: FooterSize, Meta: l.footer})
	}
}

// blocks yields, in increasing order, the index of every block that
// intersects a Data run.
func (l *Layout) blocks() iter.Seq[int64] {
	return func(yield func(int64) bool) {
		next := int64(0) // first block not yet yielded
		for _, r := range l.runs {
			for b := max(r.Off/BlockSize, next); b <= (r.End()-1)/BlockSize; b++ {
				if !yield(b) {
					return
				}
				next = b + 1
			}
		}
	}
}

// dataRuns validates extents against size and returns its Data runs with
// adjacent ones merged.
func dataRuns(size int64, extents []formats.Extent) ([]formats.Extent, error) {
	if err := formats.CheckExtents(size, extents); err != nil {
		return nil, &Error{Struct: "extent list", Off: -1, Msg: err.Error(), Err: ErrInvalid}
	}
	return formats.DataRuns(extents), nil
}

func creatorApp(s string) ([4]byte, error) {
	var app [4]byte
	if s == "" {
		s = "win "
	}
	if len(s) > len(app) {
		return app, &Error{Struct: "options", Field: "creator application", Off: -1, Msg: fmt.Sprintf("%q is longer than 4 bytes", s), Err: ErrInvalid}
	}
	copy(app[:], s)
	return app, nil
}

// timestamp converts t to VHD seconds since 2000-01-01 UTC, clamped.
func timestamp(t time.Time) uint32 {
	if t.IsZero() {
		t = time.Now()
	}
	s := int64(t.Sub(epoch) / time.Second)
	if t.Before(epoch) {
		return 0
	}
	if s > 0xFFFFFFFF || s < 0 {
		return 0xFFFFFFFF
	}
	return uint32(s)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
