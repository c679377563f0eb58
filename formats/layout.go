package formats

import (
	"errors"
	"fmt"
	"io"
	"iter"
)

// A Piece is one part of a planned output file: the bytes of [Off, Off+Len)
// of the output come from Meta (format metadata computed by the planner), or
// from the virtual disk range [Src, Src+Len) when Meta is nil and Src >= 0,
// or are zeros when Meta is nil and Src < 0 (zeros that must be present in a
// stream, such as block padding; a seekable writer may leave them as holes
// only where the format allows — see Layout).
type Piece struct {
	Off, Len int64
	Meta     []byte
	Src      int64
}

// IsData reports whether the piece copies virtual-disk bytes.
func (p Piece) IsData() bool { return p.Meta == nil && p.Src >= 0 }

// A Layout is a whole output file planned before any data is read: writers
// are pure functions from (virtual size, extent list, options) to a Layout.
//
// Pieces yields non-overlapping pieces in increasing Off. Output bytes that no
// piece covers are zeros; a seekable writer leaves them unwritten (the output
// file is created empty and extended to FileSize, so they read as zero and
// may stay sparse), a stream writer writes zeros.
type Layout interface {
	FileSize() int64
	Pieces() iter.Seq[Piece]
}

// ErrLayout reports a planner that produced overlapping or out-of-order
// pieces — a bug in a writer, never a property of the input.
var ErrLayout = errors.New("invalid layout")

// checkPiece validates p against the previous end and the file size.
func checkPiece(p Piece, prevEnd, fileSize int64) error {
	if p.Len < 0 || p.Off < prevEnd || p.Off > fileSize-p.Len || (p.Meta != nil && int64(len(p.Meta)) != p.Len) {
		return fmt.Errorf("formats: piece [%d, +%d) after %d in a %d-byte file: %w", p.Off, p.Len, prevEnd, fileSize, ErrLayout)
	}
	return nil
}

// WriteLayout writes l to dst, reading data pieces from src with one buffer of
// at most bufSize bytes. It is the plain, sequential reference writer; the
// copy engine in package convert does the same with several readers. dst
// must already read as zeros where no piece is written (a new, empty file);
// WriteLayout does not set the file's size — call Truncate(FileSize()) on a
// file.
func WriteLayout(dst io.WriterAt, l Layout, src io.ReaderAt, bufSize int) error {
	buf := make([]byte, bufSize)
	var prevEnd int64
	for p := range l.Pieces() {
		if err := checkPiece(p, prevEnd, l.FileSize()); err != nil {
			return err
		}
		prevEnd = p.Off + p.Len
		switch {
		case p.Meta != nil:
			if _, err := dst.WriteAt(p.Meta, p.Off); err != nil {
				return err
			}
		case p.Src >= 0:
			for done := int64(0); done < p.Len; {
				n := min(int64(len(buf)), p.Len-done)
				if _, err := ReadFull(src, buf[:n], p.Src+done); err != nil {
					return err
				}
				if !IsZero(buf[:n]) {
					if _, err := dst.WriteAt(buf[:n], p.Off+done); err != nil {
						return err
					}
				}
				done += n
			}
		}
	}
	return nil
}

// StreamLayout writes l to w as one sequential stream of exactly FileSize
// bytes, zeros included.
func StreamLayout(w io.Writer, l Layout, src io.ReaderAt, bufSize int) error {
	buf := make([]byte, bufSize)
	var pos int64
	zeros := func(n int64) error {
		clear(buf)
		for n > 0 {
			k := min(int64(len(buf)), n)
			if _, err := w.Write(buf[:k]); err != nil {
				return err
			}
			n -= k
		}
		return nil
	}
	for p := range l.Pieces() {
		if err := checkPiece(p, pos, l.FileSize()); err != nil {
			return err
		}
		if err := zeros(p.Off - pos); err != nil {
			return err
		}
		switch {
		case p.Meta != nil:
			if _, err := w.Write(p.Meta); err != nil {
				return err
			}
		case p.Src >= 0:
			for done := int64(0); done < p.Len; {
				n := min(int64(len(buf)), p.Len-done)
				if _, err := ReadFull(src, buf[:n], p.Src+done); err != nil {
					return err
				}
				if _, err := w.Write(buf[:n]); err != nil {
					return err
				}
				done += n
			}
		default:
			if err := zeros(p.Len); err != nil {
				return err
			}
		}
		pos = p.Off + p.Len
	}
	return zeros(l.FileSize() - pos)
}

// ReadFull reads len(p) bytes at off: io.EOF after a full read is success,
// a short read is io.ErrUnexpectedEOF.
func ReadFull(r io.ReaderAt, p []byte, off int64) (int, error) {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// IsZero reports whether p is all zero bytes, comparing eight bytes at a time.
func IsZero(p []byte) bool {
	for len(p) >= 64 {
		var x uint64
		for i := 0; i < 64; i += 8 {
			x |= uint64(p[i]) | uint64(p[i+1])<<8 | uint64(p[i+2])<<16 | uint64(p[i+3])<<24 |
				uint64(p[i+4])<<32 | uint64(p[i+5])<<40 | uint64(p[i+6])<<48 | uint64(p[i+7])<<56
		}
		if x != 0 {
			return false
		}
		p = p[64:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
