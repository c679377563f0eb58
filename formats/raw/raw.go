// Package raw plans raw disk images and reads them back.
//
// A raw image is the virtual disk's bytes, nothing else (image-formats.md
// §4.1). Plan lays out the Data runs of a disk at their virtual offsets in a
// file of exactly the virtual size; everything else is left to
// formats.WriteLayout, which keeps it sparse in a file, or to
// formats.StreamLayout, which writes zeros. Open reads a raw image as a
// formats.Image and, on Linux, reports a sparse file's holes as Hole runs
// via lseek SEEK_DATA/SEEK_HOLE.
package raw

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"strings"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// ErrInvalid reports an invalid argument: a negative size, or an extent
// list out of order or out of range. Every error of this package unwraps to
// it or to an error of the underlying reader.
var ErrInvalid = errors.New("invalid argument")

// Error is the error type of this package.
type Error struct {
	What string // what was wrong: "size", "extent 3" …
	Off  int64  // virtual-disk offset concerned, or -1
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("raw: ")
	b.WriteString(e.What)
	if e.Off >= 0 {
		fmt.Fprintf(&b, " at 0x%x", e.Off)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Layout is a planned raw image; it implements formats.Layout.
type Layout struct {
	size int64
	runs []formats.Extent
}

// Plan computes the raw image of a virtual disk of size bytes whose runs are
// extents: in increasing order, not overlapping, within [0, size); uncovered
// ranges count as holes. Each Data run becomes one piece at its virtual
// offset; Zero and Hole runs are not pieces, so they stay holes in a sparse
// file and are zeros in a stream. The file size is the virtual size.
func Plan(size int64, extents []formats.Extent) (*Layout, error) {
	if size < 0 {
		return nil, &Error{What: "size", Off: -1, Msg: fmt.Sprintf("%d bytes", size), Err: ErrInvalid}
	}
	if err := formats.CheckExtents(size, extents); err != nil {
		return nil, &Error{What: "extent list", Off: -1, Msg: err.Error(), Err: ErrInvalid}
	}
	return &Layout{size: size, runs: formats.DataRuns(extents)}, nil
}

// FileSize returns the virtual size.
func (l *Layout) FileSize() int64 { return l.size }

// Pieces yields the Data runs, each copied to its own virtual offset.
func (l *Layout) Pieces() iter.Seq[formats.Piece] {
	return func(yield func(formats.Piece) bool) {
		for _, r := range l.runs {
			if !yield(formats.Piece{Off: r.Off, Len: r.Len, Src: r.Off}) {
				return
			}
		}
	}
}

// DataSeeker finds data and holes in a sparse file, like lseek with
// SEEK_DATA and SEEK_HOLE: SeekData returns the first offset >= off that
// holds data, SeekHole the first offset >= off in a hole (the end of the file
// counts as one). When off is at or past the last data, SeekData returns an
// error wrapping io.EOF.
type DataSeeker interface {
	SeekData(off int64) (int64, error)
	SeekHole(off int64) (int64, error)
}

// Image is a raw image opened for reading; it implements formats.Image.
type Image struct {
	r    io.ReaderAt
	size int64
	seek DataSeeker // nil: everything is Data
}

// Open returns the raw image held in the first size bytes of r. If r
// implements DataSeeker, or is an *os.File on a Linux file system that
// supports SEEK_DATA/SEEK_HOLE, Extent reports the file's holes as Hole
// runs; otherwise the whole image is one Data run. (SEEK_DATA moves the
// file's offset: do not use Read or Seek on that file while the Image is in
// use; ReadAt is unaffected.)
func Open(r io.ReaderAt, size int64) (*Image, error) {
	if size < 0 {
		return nil, &Error{What: "size", Off: -1, Msg: fmt.Sprintf("%d bytes", size), Err: ErrInvalid}
	}
	m := &Image{r: r, size: size}
	if s, ok := r.(DataSeeker); ok {
		m.seek = s
	} else if f, ok := r.(*os.File); ok {
		m.seek = fileSeeker(f) // nil where unsupported
	}
	return m, nil
}

// Size returns the size of the image.
func (m *Image) Size() int64 { return m.size }

// ReadAt reads from the underlying reader, limited to the image size.
func (m *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &Error{What: "read", Off: off, Msg: "negative offset", Err: ErrInvalid}
	}
	if off >= m.size {
		return 0, io.EOF
	}
	short := int64(len(p)) > m.size-off
	if short {
		p = p[:m.size-off]
	}
	n, err := m.r.ReadAt(p, off)
	if n == len(p) {
		err = nil
		if short {
			err = io.EOF
		}
	} else if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF // the image is shorter than size
	}
	return n, err
}

// Extent returns the Data or Hole run that starts at off. Without hole
// information, or when the seeker fails, it is Data to the end.
func (m *Image) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= m.size {
		return formats.Extent{}, fmt.Errorf("raw: extent at %d of a %d-byte image: %w", off, m.size, formats.ErrOutOfRange)
	}
	data := formats.Extent{Off: off, Len: m.size - off, Kind: formats.Data}
	if m.seek == nil {
		return data, nil
	}
	d, err := m.seek.SeekData(off)
	if errors.Is(err, io.EOF) {
		return formats.Extent{Off: off, Len: m.size - off, Kind: formats.Hole}, nil
	}
	if err != nil || d < off {
		return data, nil
	}
	if d > off {
		return formats.Extent{Off: off, Len: min(d, m.size) - off, Kind: formats.Hole}, nil
	}
	h, err := m.seek.SeekHole(off)
	if err != nil || h <= off {
		return data, nil
	}
	return formats.Extent{Off: off, Len: min(h, m.size) - off, Kind: formats.Data}, nil
}
