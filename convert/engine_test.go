package convert

import (
	"bytes"
	"context"
	"errors"
	"io"
	"iter"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// pattern is a synthetic source: byte at off is derived from off, except in
// zero ranges.
type pattern struct {
	size  int64
	zeros []formats.Extent // ranges that read as zero
	fail  []formats.Extent // ranges whose reads fail
	reads atomic.Int64
}

func (p *pattern) ReadAt(b []byte, off int64) (int, error) {
	p.reads.Add(1)
	for _, f := range p.fail {
		if off < f.End() && off+int64(len(b)) > f.Off {
			return 0, errors.New("injected read error")
		}
	}
	n := len(b)
	var err error
	if off+int64(n) > p.size {
		n = int(max(0, p.size-off))
		err = io.EOF
	}
	for i := 0; i < n; i++ {
		o := off + int64(i)
		b[i] = byte(o*7+o>>9) | 1
		for _, z := range p.zeros {
			if o >= z.Off && o < z.End() {
				b[i] = 0
			}
		}
	}
	return n, err
}

// rawLayout maps pieces at their virtual offsets, like a raw file.
type rawLayout struct {
	size   int64
	pieces []formats.Piece
}

func (r rawLayout) FileSize() int64 { return r.size }
func (r rawLayout) Pieces() iter.Seq[formats.Piece] {
	return func(yield func(formats.Piece) bool) {
		for _, p := range r.pieces {
			if !yield(p) {
				return
			}
		}
	}
}

// testLayout has a metadata header, data pieces at shifted offsets, an
// explicit zero piece and a gap.
func testLayout(size int64) (rawLayout, []byte) {
	hdr := []byte("HEADER--")
	l := rawLayout{size: 8 + size + 4096, pieces: []formats.Piece{
		{Off: 0, Len: 8, Meta: hdr},
		{Off: 8, Len: size / 2, Src: 0},
		{Off: 8 + size/2, Len: 512, Src: -1},
		{Off: 8 + size/2 + 1024, Len: size/2 - 1024, Src: size/2 + 1024},
		{Off: 8 + size + 100, Len: 4, Meta: []byte("TAIL")},
	}}
	return l, hdr
}

func expected(t *testing.T, l rawLayout, src io.ReaderAt) []byte {
	var buf bytes.Buffer
	if err := formats.StreamLayout(&buf, l, src, 1<<20); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestWriteAndStream(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int64
		jobs  int
		chunk int
	}{
		{"small one job", 100 << 10, 1, 64 << 10},
		{"unaligned many jobs", 9<<20 + 3*512, 8, 64 << 10},
		{"default", 17 << 20, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &pattern{size: tc.size, zeros: []formats.Extent{{Off: 1 << 20, Len: 2 << 20}}}
			l, _ := testLayout(tc.size)
			want := expected(t, l, src)
			var progress atomic.Int64
			opts := Options{Jobs: tc.jobs, ChunkSize: tc.chunk, Progress: func(n int64) { progress.Add(n) }}

			f, err := os.Create(filepath.Join(t.TempDir(), "out"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, err := Write(context.Background(), f, l, src, opts)
			if err != nil {
				t.Fatal(err)
			}
			f.Truncate(st.FileSize)
			got, _ := os.ReadFile(f.Name())
			if !bytes.Equal(got, want) {
				t.Fatal("seekable output differs from the reference writer")
			}
			dataLen := tc.size - 1024
			if st.DataRead != dataLen || progress.Load() != dataLen {
				t.Errorf("read %d, progress %d; want %d", st.DataRead, progress.Load(), dataLen)
			}
			if tc.size > 3<<20 && st.ZeroSkipped < 1<<20 {
				t.Errorf("zero chunks skipped: %d bytes, want ≥ 1 MiB", st.ZeroSkipped)
			}

			var out bytes.Buffer
			st2, err := Stream(context.Background(), &out, l, src, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want) || st2.BytesWritten != l.FileSize() {
				t.Fatalf("stream differs (%d bytes written, want %d)", st2.BytesWritten, l.FileSize())
			}
		})
	}
}

// failWriter fails every write after the first `after` ones; safe for
// concurrent WriteAt.
type failWriter struct{ after atomic.Int64 }

func newFailWriter(after int64) *failWriter {
	w := &failWriter{}
	w.after.Store(after)
	return w
}

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after.Add(-1) < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func (w *failWriter) WriteAt(p []byte, off int64) (int, error) { return w.Write(p) }

func TestErrors(t *testing.T) {
	const size = 8 << 20
	l, _ := testLayout(size)
	t.Run("read error names the offset", func(t *testing.T) {
		src := &pattern{size: size, fail: []formats.Extent{{Off: 5 << 20, Len: 1}}}
		for _, mode := range []string{"write", "stream"} {
			var err error
			if mode == "write" {
				_, err = Write(context.Background(), newFailWriter(1<<30), l, src, Options{ChunkSize: 1 << 20})
			} else {
				_, err = Stream(context.Background(), io.Discard, l, src, Options{ChunkSize: 1 << 20})
			}
			var re *ReadError
			if !errors.As(err, &re) || re.Off != 5<<20 {
				t.Errorf("%s: err = %v, want a ReadError at %d", mode, err, 5<<20)
			}
		}
	})
	t.Run("write error", func(t *testing.T) {
		src := &pattern{size: size}
		if _, err := Write(context.Background(), newFailWriter(3), l, src, Options{ChunkSize: 1 << 20}); err == nil || err.Error() != "disk full" {
			t.Errorf("Write: %v", err)
		}
		if _, err := Stream(context.Background(), newFailWriter(3), l, src, Options{ChunkSize: 1 << 20}); err == nil || err.Error() != "disk full" {
			t.Errorf("Stream: %v", err)
		}
	})
	t.Run("bad layout", func(t *testing.T) {
		bad := rawLayout{size: 100, pieces: []formats.Piece{{Off: 10, Len: 50, Src: 0}, {Off: 40, Len: 10, Src: 0}}}
		if _, err := Write(context.Background(), newFailWriter(100), bad, &pattern{size: 100}, Options{}); !errors.Is(err, ErrLayout) {
			t.Errorf("overlap: %v", err)
		}
		if _, err := Stream(context.Background(), io.Discard, rawLayout{size: 10, pieces: []formats.Piece{{Off: 0, Len: 50, Src: 0}}}, &pattern{size: 100}, Options{}); !errors.Is(err, ErrLayout) {
			t.Errorf("past the end: %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		src := &pattern{size: size}
		n := 0
		cw := writerFunc(func(p []byte) (int, error) {
			n++
			if n == 2 {
				cancel()
			}
			return len(p), nil
		})
		if _, err := Stream(ctx, cw, l, src, Options{ChunkSize: 64 << 10}); !errors.Is(err, context.Canceled) {
			t.Errorf("Stream: %v", err)
		}
		if src.reads.Load() > 20 {
			t.Errorf("%d reads after cancellation at the second write", src.reads.Load())
		}
		if _, err := Write(ctx, newFailWriter(1<<30), l, src, Options{}); !errors.Is(err, context.Canceled) {
			t.Errorf("Write: %v", err)
		}
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Random layouts: seekable, stream and the reference writer agree.
func TestRandomLayouts(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 30; i++ {
		size := int64(rng.IntN(6<<20) + 1)
		src := &pattern{size: size}
		var l rawLayout
		var off int64
		for off < size {
			n := min(int64(rng.IntN(1<<20)+1), size-off)
			switch rng.IntN(4) {
			case 0:
				l.pieces = append(l.pieces, formats.Piece{Off: off, Len: n, Meta: bytes.Repeat([]byte{byte(i)}, int(n))})
			case 1:
				l.pieces = append(l.pieces, formats.Piece{Off: off, Len: n, Src: -1})
			case 2:
				l.pieces = append(l.pieces, formats.Piece{Off: off, Len: n, Src: size - off - n})
			}
			off += n
		}
		l.size = size
		want := expected(t, l, src)
		var out bytes.Buffer
		if _, err := Stream(context.Background(), &out, l, src, Options{Jobs: 3, ChunkSize: 64 << 10}); err != nil || !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("layout %d: stream differs (%v)", i, err)
		}
		f, _ := os.Create(filepath.Join(t.TempDir(), "o"))
		if _, err := Write(context.Background(), f, l, src, Options{Jobs: 3, ChunkSize: 64 << 10}); err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		got, _ := os.ReadFile(f.Name())
		f.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("layout %d: seekable output differs", i)
		}
	}
}

// serialWriter records into a buffer and fails the test if two WriteAt
// calls overlap in time.
type serialWriter struct {
	t      *testing.T
	busy   atomic.Bool
	data   []byte
	writes atomic.Int64
}

func (w *serialWriter) WriteAt(p []byte, off int64) (int, error) {
	if !w.busy.CompareAndSwap(false, true) {
		w.t.Error("WriteAt called while another WriteAt was running")
	}
	defer w.busy.Store(false)
	w.writes.Add(1)
	time.Sleep(100 * time.Microsecond) // let the readers catch up
	copy(w.data[off:], p)
	return len(p), nil
}

// TestWriteOneWriter checks that Write has one writer however many readers
// run: concurrent writers to one file only contend for its inode lock.
func TestWriteOneWriter(t *testing.T) {
	const size = 9 << 20
	src := &pattern{size: size}
	l, _ := testLayout(size)
	want := expected(t, l, src)
	w := &serialWriter{t: t, data: make([]byte, l.FileSize())}
	if _, err := Write(context.Background(), w, l, src, Options{Jobs: 8, ChunkSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.data, want) {
		t.Fatal("output differs from the reference writer")
	}
	if w.writes.Load() < 100 {
		t.Fatalf("%d writes; want one per 64 KiB chunk", w.writes.Load())
	}
}
