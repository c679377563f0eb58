package raw

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	tsynth "github.com/vmfs2vhd/vmfs2vhd/internal/synth"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"testing/iotest"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

// synth is a synthetic formats.Image that costs no memory: Data runs hold
// bytes derived from their offset (never an all-zero 8-byte word), other
// runs read as zeros.
type synth struct {
	size int64
	ext  []formats.Extent
}

func (s *synth) Size() int64 { return s.size }

func (s *synth) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= s.size {
		return formats.Extent{}, formats.ErrOutOfRange
	}
	e := s.ext[sort.Search(len(s.ext), func(i int) bool { return s.ext[i].End() > off })]
	return formats.Extent{Off: off, Len: e.End() - off, Kind: e.Kind}, nil
}

func (s *synth) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n, err := len(p), error(nil)
	if int64(n) > s.size-off {
		n, err = int(s.size-off), io.EOF
	}
	for done := 0; done < n; {
		e, _ := s.Extent(off + int64(done))
		k := int(min(int64(n-done), e.Len))
		if e.Kind == formats.Data {
			var w [8]byte
			for i, o := 0, off+int64(done); i < k; {
				binary.LittleEndian.PutUint64(w[:], (uint64(o/8)*0x9E3779B97F4A7C15)|1)
				c := copy(p[done+i:done+k], w[o%8:])
				i += c
				o += int64(c)
			}
		} else {
			clear(p[done : done+k])
		}
		done += k
	}
	return n, err
}

// pattern returns one of the test allocation patterns over [0, size) with
// at most maxData bytes of Data.
func pattern(name string, size, maxData int64) []formats.Extent {
	var ext []formats.Extent
	add := func(off, n int64, k formats.Kind) {
		if n > 0 {
			ext = append(ext, formats.Extent{Off: off, Len: n, Kind: k})
		}
	}
	switch name {
	case "empty":
		add(0, size, formats.Hole)
	case "full":
		if size <= maxData {
			add(0, size, formats.Data)
			break
		}
		h := maxData / 2 / 512 * 512
		add(0, h, formats.Data)
		add(h, size-2*h, formats.Zero)
		add(size-h, h, formats.Data)
	case "alternating", "random":
		rng := rand.New(rand.NewPCG(uint64(size), 3))
		const chunk = 96 << 10
		count := max(1, min(size/(2*chunk), maxData/chunk))
		period := size / count / 512 * 512
		for i := int64(0); i < count; i++ {
			pos := i * period
			n := int64(chunk)
			if name == "random" {
				n = (1 + rng.Int64N(chunk/512)) * 512
			}
			n = min(n, size-pos)
			add(pos, n, formats.Data)
			end := pos + period
			if i == count-1 {
				end = size
			}
			add(pos+n, end-pos-n, formats.Kind(2+i%2))
		}
	}
	return ext
}

func TestPlan(t *testing.T) {
	ext := []formats.Extent{
		{Off: 0, Len: 512, Kind: formats.Data},
		{Off: 512, Len: 512, Kind: formats.Data},
		{Off: 1024, Len: 1024, Kind: formats.Zero},
		{Off: 4096, Len: 4096, Kind: formats.Data},
	}
	l, err := Plan(1<<20, ext)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for p := range l.Pieces() {
		got = append(got, fmt.Sprintf("%d+%d<-%d", p.Off, p.Len, p.Src))
	}
	if fmt.Sprint(got) != "[0+1024<-0 4096+4096<-4096]" || l.FileSize() != 1<<20 {
		t.Errorf("pieces %v, file size %d", got, l.FileSize())
	}
	for _, bad := range [][]formats.Extent{
		{{Off: 0, Len: 512, Kind: formats.Data}, {Off: 256, Len: 512, Kind: formats.Data}},
		{{Off: 1 << 20, Len: 1, Kind: formats.Data}},
		{{Off: 0, Len: 0, Kind: formats.Hole}},
		{{Off: 0, Len: 1, Kind: 0}},
	} {
		if _, err := Plan(1<<20, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Plan(%v) = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := Plan(-1, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative size: %v", err)
	}
}

// fakeSeeker reports data at [4096, 8192) of a 16 KiB image.
type fakeSeeker struct{ *bytes.Reader }

func (fakeSeeker) SeekData(off int64) (int64, error) {
	switch {
	case off < 4096:
		return 4096, nil
	case off < 8192:
		return off, nil
	}
	return 0, io.EOF
}

func (fakeSeeker) SeekHole(off int64) (int64, error) {
	if off >= 4096 && off < 8192 {
		return 8192, nil
	}
	return off, nil
}

func TestOpen(t *testing.T) {
	data := make([]byte, 16<<10)
	for i := range data {
		data[i] = byte(i*7 + 1)
	}
	tests := []struct {
		name string
		r    io.ReaderAt
		want []formats.Extent
	}{
		{"plain reader", bytes.NewReader(data), []formats.Extent{{Off: 0, Len: 16 << 10, Kind: formats.Data}}},
		{"data seeker", fakeSeeker{bytes.NewReader(data)}, []formats.Extent{
			{Off: 0, Len: 4096, Kind: formats.Hole}, {Off: 4096, Len: 4096, Kind: formats.Data}, {Off: 8192, Len: 8192, Kind: formats.Hole}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := Open(tt.r, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := formats.Extents(img)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("extents %v, want %v", got, tt.want)
			}
			if err := iotest.TestReader(io.NewSectionReader(img, 0, img.Size()), data); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("shorter than size", func(t *testing.T) {
		img, _ := Open(bytes.NewReader(data), int64(len(data))+512)
		if _, err := img.ReadAt(make([]byte, 1024), int64(len(data))-512); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("err = %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

// TestWrite writes raw images of several sizes and patterns as sparse files
// and as streams; qemu-img judges the size and allocation, the reader (with
// SEEK_DATA) the content and holes.
func TestWrite(t *testing.T) {
	sizes := []struct {
		name          string
		size, maxData int64
	}{
		{"1MiB", 1 << 20, 64 << 20},
		{"1MiB+512", 1<<20 + 512, 64 << 20},
		{"100MiB+7s", 100<<20 + 7*512, 64 << 20},
		{"2GiB", 2 << 30, 64 << 20},
		{"2000GiB", 2000 << 30, 10 << 20},
	}
	for _, sz := range sizes {
		for _, pat := range []string{"empty", "full", "alternating", "random"} {
			t.Run(sz.name+"/"+pat, func(t *testing.T) {
				src := &synth{size: sz.size, ext: pattern(pat, sz.size, sz.maxData)}
				l, err := Plan(src.size, src.ext)
				if err != nil {
					t.Fatal(err)
				}
				path := filepath.Join(t.TempDir(), "out.raw")
				f, err := os.Create(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := formats.WriteLayout(f, l, src, 1<<20); err != nil {
					t.Fatal(err)
				}
				if err := f.Truncate(l.FileSize()); err != nil {
					t.Fatal(err)
				}
				var data int64
				for _, e := range src.ext {
					if e.Kind == formats.Data {
						data += e.Len
					}
				}
				if du := tsynth.DiskUsage(t, path); du > data*101/100+int64(2*len(src.ext)+1)*4096 {
					t.Errorf("disk usage %d for %d data bytes", du, data)
				}

				img, err := Open(f, l.FileSize())
				if err != nil {
					t.Fatal(err)
				}
				if img.Size() != src.size {
					t.Fatalf("size %d", img.Size())
				}
				// Every source Data byte reads back and is Data; every
				// byte the reader calls a hole is zero in the source.
				buf, want := make([]byte, 1<<20), make([]byte, 1<<20)
				err = formats.Walk(img, 0, img.Size(), func(e formats.Extent) error {
					return formats.Walk(src, e.Off, e.Len, func(s formats.Extent) error {
						if s.Kind == formats.Data && e.Kind != formats.Data {
							t.Errorf("source data %v is %v in the file", s, e)
						}
						if s.Kind != formats.Data || e.Kind != formats.Data {
							return nil
						}
						for off := s.Off; off < s.End(); off += int64(len(buf)) {
							n := min(int64(len(buf)), s.End()-off)
							if _, err := img.ReadAt(buf[:n], off); err != nil {
								return err
							}
							src.ReadAt(want[:n], off)
							if !bytes.Equal(buf[:n], want[:n]) {
								t.Fatalf("content differs at %d", off)
							}
						}
						return nil
					})
				})
				if err != nil {
					t.Fatal(err)
				}

				// A stream of a big sparse disk is mostly zeros, and
				// reading the file's holes back is slow on some hosts.
				if sz.size <= 128<<20 {
					streamEqualsFile(t, l, src, path)
				}
				out := oracle.Run(t, "qemu-img", "info", "--output=json", "-f", "raw", path)
				var info struct {
					VirtualSize int64 `json:"virtual-size"`
				}
				json.Unmarshal(out, &info)
				if info.VirtualSize != src.size {
					t.Errorf("qemu-img virtual size %d, want %d", info.VirtualSize, src.size)
				}
				checkMap(t, path, src)
			})
		}
	}
}

// checkMap asks qemu-img map which ranges hold data: every Data byte of
// the source must be in one.
func checkMap(t *testing.T, path string, src *synth) {
	t.Helper()
	out := oracle.Run(t, "qemu-img", "map", "--output=json", "-f", "raw", path)
	var m []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("qemu-img map: %v", err)
	}
	for _, e := range src.ext {
		if e.Kind != formats.Data {
			continue
		}
		i := sort.Search(len(m), func(i int) bool { return m[i].Start+m[i].Length > e.Off })
		for off := e.Off; off < e.End(); i++ {
			if i >= len(m) || !m[i].Data || m[i].Start > off {
				t.Fatalf("qemu-img map: source data %v not reported as data near %d", e, off)
			}
			off = m[i].Start + m[i].Length
		}
	}
}

// cmpWriter compares what is written with a file.
type cmpWriter struct {
	f   *os.File
	off int64
	buf []byte
}

func (c *cmpWriter) Write(p []byte) (int, error) {
	if cap(c.buf) < len(p) {
		c.buf = make([]byte, len(p))
	}
	b := c.buf[:len(p)]
	if _, err := io.ReadFull(c.f, b); err != nil || !bytes.Equal(b, p) {
		return 0, fmt.Errorf("stream differs from the file in [%d, +%d): %v", c.off, len(p), err)
	}
	c.off += int64(len(p))
	return len(p), nil
}

func streamEqualsFile(t *testing.T, l formats.Layout, src formats.Image, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := formats.StreamLayout(&cmpWriter{f: f}, l, src, 1<<20); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Read(make([]byte, 1)); n != 0 {
		t.Fatal("stream is shorter than the file")
	}
}

// FuzzOpen reads arbitrary bytes as a raw image of arbitrary size.
func FuzzOpen(f *testing.F) {
	f.Add([]byte("hello, raw"), int64(10))
	f.Add(make([]byte, 4096), int64(8192))
	f.Add([]byte{1, 2, 3}, int64(-1))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		img, err := Open(bytes.NewReader(b), size)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatal(err)
			}
			return
		}
		size = min(size, int64(len(b))+4096)
		p := make([]byte, 100)
		for off := int64(0); off < size; off += 97 {
			n, err := img.ReadAt(p, off)
			if n > len(p) || (err == nil && n != len(p)) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if err == nil && !bytes.Equal(p[:n], b[off:off+int64(n)]) {
				t.Fatal("wrong bytes")
			}
		}
		if img.Size() > 0 {
			if _, err := img.Extent(0); err != nil {
				t.Fatal(err)
			}
		}
	})
}
