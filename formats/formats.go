// Package formats holds the vocabulary that every stage of vmfs2vhd shares:
// a virtual disk is an Image — an io.ReaderAt over virtual-disk offsets, its
// size, and an extent query that says, for any offset, whether the bytes
// there are stored data, read as zero although allocated, or are not
// allocated at all.
//
// Readers (package vmfs, formats/vmdk) produce Images; the copy engine
// (package convert) walks their extents so that holes and zero runs are never
// read; writers (formats/raw, vhd, vhdx, qcow2) plan their layout from the
// same extent list before any data is written.
package formats

import (
	"errors"
	"fmt"
	"io"
)

// Kind says what a range of a virtual disk holds.
type Kind uint8

const (
	// Data ranges are backed by stored bytes, which may themselves happen to
	// be zero (an eager-zeroed disk is all Data).
	Data Kind = iota + 1
	// Zero ranges are allocated but read as zeros without any stored bytes:
	// VMFS to-be-zeroed blocks, ZERO extents, zeroed grains.
	Zero
	// Hole ranges are not allocated at this layer; at the bottom of a chain
	// they read as zeros.
	Hole
)

func (k Kind) String() string {
	switch k {
	case Data:
		return "data"
	case Zero:
		return "zero"
	case Hole:
		return "hole"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Extent is a run of one Kind in a virtual disk: [Off, Off+Len).
type Extent struct {
	Off, Len int64
	Kind     Kind
}

// End returns Off+Len.
func (e Extent) End() int64 { return e.Off + e.Len }

// Image is a virtual disk.
//
// ReadAt takes virtual-disk offsets, is safe for concurrent use and follows
// the io.ReaderAt contract (a read that ends past Size returns io.EOF with the
// bytes before it). Extent returns the longest run of a single Kind that
// starts at off, 0 <= off < Size(); it costs metadata reads only. An
// implementation may return shorter runs than the longest possible (callers
// merge adjacent runs of one kind), but never a run of length 0.
type Image interface {
	io.ReaderAt
	Size() int64
	Extent(off int64) (Extent, error)
}

// Location is Locate's answer for the first Len bytes of a range: stored
// as they are at Off of R, the file or device that holds them — or, when R
// is nil, not stored as-is (to be read with the image's ReadAt).
type Location struct {
	R   io.ReaderAt
	Off int64
	Len int64
}

// Locator is implemented by Images that can say where their bytes are
// stored, so that a caller may move them without reading them through the
// image — the NBD server hands them to sendfile(2) when R is an operating
// system file (it implements syscall.Conn).
//
// Locate answers for a prefix of [off, off+n), 0 <= off < Size, n > 0, of
// 0 < Len <= n bytes. With R set, reading Len bytes of R at Off gives
// exactly what ReadAt of the image gives, whatever the extents say of them
// (a hole of a sparse local file may be located: it reads as zeros there
// too). R is nil for bytes that are not stored as-is in a file: zero runs
// over stale blocks (VMFS to-be-zeroed blocks, zeroed grains), unallocated
// ranges, resident or compressed data. Callers ask for Data ranges.
type Locator interface {
	Locate(off, n int64) (Location, error)
}

// ErrOutOfRange is returned by Extent for an offset outside [0, Size).
var ErrOutOfRange = errors.New("offset out of range")

// Extents walks img from 0 to Size and returns its runs with adjacent runs of
// the same Kind merged. It is a convenience for tests and planning of small
// images; the copy engine walks with Extent directly.
func Extents(img Image) ([]Extent, error) {
	var out []Extent
	err := Walk(img, 0, img.Size(), func(e Extent) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// Walk calls fn for every merged run of img that intersects [off, off+n),
// clipped to that range, in order.
func Walk(img Image, off, n int64, fn func(Extent) error) error {
	size := img.Size()
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("formats: walk [%d, +%d) of a %d-byte image: %w", off, n, size, ErrOutOfRange)
	}
	end := off + n
	var cur Extent
	for pos := off; pos < end; {
		e, err := img.Extent(pos)
		if err != nil {
			return err
		}
		if e.Len <= 0 || e.Off > pos || e.End() <= pos {
			return fmt.Errorf("formats: extent query at %d returned [%d, +%d): %w", pos, e.Off, e.Len, ErrBadExtent)
		}
		e.Len = min(e.End(), end) - pos
		e.Off = pos
		if cur.Len > 0 && cur.Kind == e.Kind && cur.End() == e.Off {
			cur.Len += e.Len
		} else {
			if cur.Len > 0 {
				if err := fn(cur); err != nil {
					return err
				}
			}
			cur = e
		}
		pos = e.End()
	}
	if cur.Len > 0 {
		return fn(cur)
	}
	return nil
}

// ErrBadExtent reports an Image whose Extent answer does not cover the
// offset asked for.
var ErrBadExtent = errors.New("extent query returned a run that does not cover the offset")

// Allocated returns the number of bytes of img that are Data.
func Allocated(img Image) (int64, error) {
	var n int64
	err := Walk(img, 0, img.Size(), func(e Extent) error {
		if e.Kind == Data {
			n += e.Len
		}
		return nil
	})
	return n, err
}

// ErrExtentList reports an extent list that is out of order, overlapping,
// empty-run, outside the disk or of an unknown Kind.
var ErrExtentList = errors.New("invalid extent list")

// CheckExtents verifies that extents are non-empty runs of a known Kind,
// sorted, not overlapping, within [0, size) — what every planner takes.
// Uncovered ranges count as holes.
func CheckExtents(size int64, extents []Extent) error {
	var prevEnd int64
	for i, e := range extents {
		if e.Len <= 0 || e.Off < prevEnd || e.Off > size-e.Len || e.Kind < Data || e.Kind > Hole {
			return fmt.Errorf("formats: extent %d, %s [%d, +%d) after %d in a %d-byte disk: %w", i, e.Kind, e.Off, e.Len, prevEnd, size, ErrExtentList)
		}
		prevEnd = e.End()
	}
	return nil
}

// DataRuns returns the Data runs of a checked extent list, adjacent ones
// merged.
func DataRuns(extents []Extent) []Extent {
	var runs []Extent
	for _, e := range extents {
		if e.Kind != Data {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].End() == e.Off {
			runs[n-1].Len += e.Len
		} else {
			runs = append(runs, e)
		}
	}
	return runs
}
