package formats

import (
	"bytes"
	"errors"
	"iter"
	"slices"
	"testing"
)

func TestCheckExtents(t *testing.T) {
	for _, tc := range []struct {
		name string
		ext  []Extent
		ok   bool
	}{
		{"empty list", nil, true},
		{"sorted with gaps", []Extent{{0, 10, Data}, {20, 5, Zero}, {25, 75, Hole}}, true},
		{"empty run", []Extent{{0, 0, Data}}, false},
		{"overlap", []Extent{{0, 10, Data}, {5, 10, Zero}}, false},
		{"out of order", []Extent{{50, 10, Data}, {0, 10, Data}}, false},
		{"past the end", []Extent{{95, 10, Data}}, false},
		{"negative", []Extent{{-1, 10, Data}}, false},
		{"unknown kind", []Extent{{0, 10, Kind(9)}}, false},
		{"overflow", []Extent{{90, 1 << 62, Data}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckExtents(100, tc.ext)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrExtentList)) {
				t.Errorf("CheckExtents = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestDataRuns(t *testing.T) {
	got := DataRuns([]Extent{{0, 10, Data}, {10, 5, Data}, {15, 5, Zero}, {20, 5, Data}, {30, 5, Data}})
	want := []Extent{{0, 15, Data}, {20, 5, Data}, {30, 5, Data}}
	if !slices.Equal(got, want) {
		t.Errorf("DataRuns = %v, want %v", got, want)
	}
}

// runs is an Image answering Extent from a fixed list, in short pieces.
type runs struct {
	size int64
	ext  []Extent
}

func (r runs) Size() int64                             { return r.size }
func (r runs) ReadAt(p []byte, off int64) (int, error) { clear(p); return len(p), nil }
func (r runs) Extent(off int64) (Extent, error) {
	for _, e := range r.ext {
		if off >= e.Off && off < e.End() {
			return Extent{off, min(e.End()-off, 3), e.Kind}, nil // short answers are allowed
		}
	}
	return Extent{}, ErrOutOfRange
}

func TestWalkMergesAndClips(t *testing.T) {
	img := runs{20, []Extent{{0, 7, Data}, {7, 6, Zero}, {13, 7, Data}}}
	got, err := Extents(img)
	if err != nil || !slices.Equal(got, img.ext) {
		t.Errorf("Extents = %v, %v; want %v", got, err, img.ext)
	}
	var clipped []Extent
	if err := Walk(img, 5, 10, func(e Extent) error { clipped = append(clipped, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []Extent{{5, 2, Data}, {7, 6, Zero}, {13, 2, Data}}; !slices.Equal(clipped, want) {
		t.Errorf("Walk(5, 10) = %v, want %v", clipped, want)
	}
	if n, _ := Allocated(img); n != 14 {
		t.Errorf("Allocated = %d, want 14", n)
	}
	if err := Walk(img, 15, 10, func(Extent) error { return nil }); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Walk past the end: %v", err)
	}
	bad := runs{20, []Extent{{0, 20, Data}}}
	bad.ext[0].Off = 1 // the answer does not cover offset 0
	if _, err := Extents(bad); err == nil {
		t.Error("a bad Extent answer must fail the walk")
	}
}

func TestIsZero(t *testing.T) {
	b := make([]byte, 1000)
	if !IsZero(b) || !IsZero(nil) {
		t.Fatal("zeros not zero")
	}
	for _, i := range []int{0, 63, 64, 511, 999} {
		b[i] = 1
		if IsZero(b) {
			t.Errorf("byte %d set: IsZero = true", i)
		}
		b[i] = 0
	}
}

type layout struct {
	size   int64
	pieces []Piece
}

func (l layout) FileSize() int64 { return l.size }
func (l layout) Pieces() iter.Seq[Piece] {
	return func(yield func(Piece) bool) {
		for _, p := range l.pieces {
			if !yield(p) {
				return
			}
		}
	}
}

type src struct{}

func (src) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		p[i] = byte(off + int64(i))
	}
	return len(p), nil
}

type mem struct{ b []byte }

func (m *mem) WriteAt(p []byte, off int64) (int, error) {
	if n := int(off) + len(p); n > len(m.b) {
		m.b = append(m.b, make([]byte, n-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func TestWriteAndStreamLayout(t *testing.T) {
	l := layout{16, []Piece{{0, 2, []byte("HD"), 0}, {4, 4, nil, 100}, {8, 2, nil, -1}, {12, 2, []byte("TL"), 0}}}
	var s bytes.Buffer
	if err := StreamLayout(&s, l, src{}, 3); err != nil {
		t.Fatal(err)
	}
	want := []byte{'H', 'D', 0, 0, 100, 101, 102, 103, 0, 0, 0, 0, 'T', 'L', 0, 0}
	if !bytes.Equal(s.Bytes(), want) {
		t.Errorf("stream %v, want %v", s.Bytes(), want)
	}
	m := &mem{make([]byte, 16)}
	if err := WriteLayout(m, l, src{}, 3); err != nil || !bytes.Equal(m.b, want) {
		t.Errorf("write %v (%v), want %v", m.b, err, want)
	}
	for _, bad := range []layout{
		{16, []Piece{{4, 4, nil, 0}, {2, 4, nil, 0}}}, // overlap
		{16, []Piece{{14, 4, nil, 0}}},                // past the end
		{16, []Piece{{0, 3, []byte("AB"), 0}}},        // meta length mismatch
	} {
		if err := StreamLayout(&bytes.Buffer{}, bad, src{}, 3); !errors.Is(err, ErrLayout) {
			t.Errorf("StreamLayout(%v) = %v, want ErrLayout", bad.pieces, err)
		}
		if err := WriteLayout(&mem{}, bad, src{}, 3); !errors.Is(err, ErrLayout) {
			t.Errorf("WriteLayout(%v) = %v, want ErrLayout", bad.pieces, err)
		}
	}
}
