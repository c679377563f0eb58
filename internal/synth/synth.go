package synth

// Package synth is test support for the format packages: a synthetic source
// image that costs no RAM whatever its size, allocation patterns, and
// helpers that write a layout to a sparse file, to a stream, and to a raw
// reference file, and compare results. It is imported by tests only.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Binary units.
const (
	KiB = int64(1) << 10
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

// Image is a formats.Image whose Data bytes are a function of their offset
// (so any range can be produced without storing it) and whose Zero and Hole
// ranges read as zeros.
type Image struct {
	Len  int64
	Ext  []formats.Extent // merged, covering [0, Len)
	Seed uint64
}

// New returns an Image of size bytes whose runs are ext (gaps are holes).
func New(size int64, ext []formats.Extent, seed uint64) *Image {
	var full []formats.Extent
	var pos int64
	add := func(e formats.Extent) {
		if n := len(full); n > 0 && full[n-1].Kind == e.Kind && full[n-1].End() == e.Off {
			full[n-1].Len += e.Len
			return
		}
		full = append(full, e)
	}
	for _, e := range ext {
		if e.Off > pos {
			add(formats.Extent{Off: pos, Len: e.Off - pos, Kind: formats.Hole})
		}
		add(e)
		pos = e.End()
	}
	if pos < size {
		add(formats.Extent{Off: pos, Len: size - pos, Kind: formats.Hole})
	}
	return &Image{Len: size, Ext: full, Seed: seed}
}

func (s *Image) Size() int64 { return s.Len }

func (s *Image) find(off int64) int {
	return sort.Search(len(s.Ext), func(i int) bool { return s.Ext[i].End() > off })
}

func (s *Image) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= s.Len {
		return formats.Extent{}, formats.ErrOutOfRange
	}
	e := s.Ext[s.find(off)]
	return formats.Extent{Off: off, Len: e.End() - off, Kind: e.Kind}, nil
}

// word returns the 8 data bytes at offset 8*i (splitmix64).
func (s *Image) word(i int64) uint64 {
	z := uint64(i)*0x9e3779b97f4a7c15 + s.Seed
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31 | 1 // never a zero word
}

func (s *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, formats.ErrOutOfRange
	}
	if off >= s.Len {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > s.Len-off {
		p, eof = p[:s.Len-off], io.EOF
	}
	total := len(p)
	for i := s.find(off); len(p) > 0; i++ {
		e := s.Ext[i]
		n := min(int64(len(p)), e.End()-off)
		q := p[:n]
		if e.Kind != formats.Data {
			clear(q)
		} else {
			s.fill(q, off)
		}
		p, off = p[n:], off+n
	}
	return total, eof
}

func (s *Image) fill(q []byte, off int64) {
	var w [8]byte
	for len(q) > 0 {
		if off%8 == 0 && len(q) >= 8 {
			binary.LittleEndian.PutUint64(q, s.word(off/8))
			q, off = q[8:], off+8
			continue
		}
		binary.LittleEndian.PutUint64(w[:], s.word(off/8))
		k := copy(q, w[off%8:])
		q, off = q[k:], off+int64(k)
	}
}

// dataBytes returns the number of Data bytes.
func (s *Image) DataBytes() int64 {
	var n int64
	for _, e := range s.Ext {
		if e.Kind == formats.Data {
			n += e.Len
		}
	}
	return n
}

// Pattern builds an extent list for a disk of size bytes holding at most
// budget bytes of data.
type Pattern struct {
	Name string
	Make func(size, budget int64, rng *rand.Rand) []formats.Extent
}

// Patterns are empty, full, alternating (Hole and Zero gaps) and random.
var Patterns = []Pattern{
	{"empty", func(size, budget int64, _ *rand.Rand) []formats.Extent { return nil }},
	{"full", func(size, budget int64, _ *rand.Rand) []formats.Extent {
		return []formats.Extent{{Off: 0, Len: budget, Kind: formats.Data}}
	}},
	// Ten data runs of budget/10 (rounded to sectors, plus an odd sector)
	// spread evenly, the gaps alternately Hole and Zero; one run ends the
	// disk.
	{"alternating", func(size, budget int64, _ *rand.Rand) []formats.Extent {
		run := max(512, (budget/10)/512*512-512)
		step := size / 10 / 512 * 512
		var out []formats.Extent
		for i := range int64(10) {
			off := i * step
			if i == 9 {
				off = size - run
			}
			if off+run > size || (len(out) > 0 && off < out[len(out)-1].End()) {
				break
			}
			if n := len(out); n > 0 && i%2 == 0 && off > out[n-1].End() {
				out = append(out, formats.Extent{Off: out[n-1].End(), Len: off - out[n-1].End(), Kind: formats.Zero})
			}
			out = append(out, formats.Extent{Off: off, Len: run, Kind: formats.Data})
		}
		return out
	}},
	// Random sector-aligned runs of every kind in a few windows.
	{"random", func(size, budget int64, rng *rand.Rand) []formats.Extent {
		var out []formats.Extent
		sectors := size / 512
		var data int64
		windows := []int64{0, rng.Int64N(sectors), rng.Int64N(sectors), sectors - min(sectors, 4096)}
		slices.Sort(windows)
		pos := int64(0)
		for _, w := range windows {
			pos = max(pos, w)
			for k := 0; k < 40 && pos < sectors && data < budget; k++ {
				n := 1 + rng.Int64N(min(sectors-pos, max(1, budget/512/20)))
				kind := []formats.Kind{formats.Data, formats.Data, formats.Zero, formats.Hole}[rng.IntN(4)]
				if kind == formats.Data {
					n = min(n, (budget-data+511)/512)
					data += n * 512
				}
				if kind != formats.Hole {
					out = append(out, formats.Extent{Off: pos * 512, Len: n * 512, Kind: kind})
				}
				pos += n
			}
		}
		return out
	}},
}

// WriteFile writes l into a new sparse file with formats.WriteLayout.
func WriteFile(t testing.TB, path string, l formats.Layout, s formats.Image) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := formats.WriteLayout(f, l, s, 4<<20); err != nil {
		t.Fatalf("WriteLayout: %v", err)
	}
	if err := f.Truncate(l.FileSize()); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// WriteStream writes l through a pipe with formats.StreamLayout into path.
func WriteStream(t testing.TB, path string, l formats.Layout, s formats.Image) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := formats.StreamLayout(pw, l, s, 1<<20)
		pw.CloseWithError(err)
		done <- err
	}()
	// Copy without ReadFrom tricks so the file is written sequentially.
	n, err := io.Copy(struct{ io.Writer }{f}, pr)
	if err != nil {
		t.Fatalf("stream copy: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("StreamLayout: %v", err)
	}
	if n != l.FileSize() {
		t.Fatalf("stream wrote %d bytes, FileSize %d", n, l.FileSize())
	}
}

// WriteRaw writes the source as a sparse raw file (Data extents only).
func WriteRaw(t testing.TB, path string, s *Image) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for _, e := range s.Ext {
		if e.Kind != formats.Data {
			continue
		}
		for done := int64(0); done < e.Len; {
			n := min(int64(len(buf)), e.Len-done)
			s.fill(buf[:n], e.Off+done)
			if _, err := f.WriteAt(buf[:n], e.Off+done); err != nil {
				t.Fatal(err)
			}
			done += n
		}
	}
	if err := f.Truncate(s.Len); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// SameFiles compares two files byte by byte.
func SameFiles(t testing.TB, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the 4 MiB at %d", filepath.Base(a), filepath.Base(b), off)
		}
		if ea != nil {
			return
		}
		off += int64(na)
	}
}

// SameImage checks that got reads like want: every range got calls Data
// is compared byte for byte, and every other range must hold no Data in
// want.
func SameImage(t testing.TB, got formats.Image, want *Image) {
	t.Helper()
	if got.Size() != want.Len {
		t.Fatalf("size %d, want %d", got.Size(), want.Len)
	}
	buf1, buf2 := make([]byte, 4<<20), make([]byte, 4<<20)
	var gotData int64
	err := formats.Walk(got, 0, got.Size(), func(e formats.Extent) error {
		if e.Kind != formats.Data {
			i := want.find(e.Off)
			for ; i < len(want.Ext) && want.Ext[i].Off < e.End(); i++ {
				if want.Ext[i].Kind == formats.Data {
					return fmt.Errorf("reader says %v for [%d, +%d) but source has data at %d", e.Kind, e.Off, e.Len, max(e.Off, want.Ext[i].Off))
				}
			}
			return nil
		}
		gotData += e.Len
		for done := int64(0); done < e.Len; {
			n := min(int64(len(buf1)), e.Len-done)
			if _, err := got.ReadAt(buf1[:n], e.Off+done); err != nil && err != io.EOF {
				return err
			}
			want.ReadAt(buf2[:n], e.Off+done)
			if !bytes.Equal(buf1[:n], buf2[:n]) {
				return fmt.Errorf("data differs in [%d, +%d)", e.Off+done, n)
			}
			done += n
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if gotData < want.DataBytes() {
		t.Fatalf("reader reports %d data bytes, source has %d", gotData, want.DataBytes())
	}
}

// WriteBoth writes l to dir/out.EXT as a sparse file and to dir/stream.EXT
// as a stream, checks they are byte-identical, and reads back the file (and
// the stream too when readStream is set) with open, comparing with want. It
// returns the two paths.
func WriteBoth(t testing.TB, dir, ext string, l formats.Layout, want *Image, readStream bool,
	open func(r io.ReaderAt, size int64) (formats.Image, error)) (file, stream string) {
	t.Helper()
	file, stream = filepath.Join(dir, "out."+ext), filepath.Join(dir, "stream."+ext)
	WriteFile(t, file, l, want)
	WriteStream(t, stream, l, want)
	SameFiles(t, file, stream)
	paths := []string{file}
	if readStream {
		paths = append(paths, stream)
	}
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := open(f, l.FileSize())
		if err != nil {
			f.Close()
			t.Fatalf("Open %s: %v", filepath.Base(path), err)
		}
		SameImage(t, img, want)
		f.Close()
	}
	return file, stream
}

// DiskUsage is the space a file takes on disk (its size where the
// filesystem does not say).
func DiskUsage(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// FuzzUpdate runs a format's in-place update planner and output
// fingerprint on arbitrary bytes, for the format's fuzz target: both parse
// the output's metadata on their own and must fail cleanly, never panic or
// allocate by what the bytes say. When open accepts the bytes, the plan
// asks for data at the start and zeros at the end of the disk.
func FuzzUpdate[I interface{ Size() int64 }, U any](b []byte,
	open func(io.ReaderAt, int64) (I, error),
	plan func(io.ReaderAt, int64, int64, []formats.Extent) (U, error),
	fingerprint func(io.ReaderAt, int64) ([32]byte, error)) {
	r, n := bytes.NewReader(b), int64(len(b))
	fingerprint(r, n)
	img, err := open(r, n)
	if err != nil {
		plan(r, n, n, nil)
		return
	}
	size := img.Size()
	var changes []formats.Extent
	if size > 0 {
		changes = append(changes, formats.Extent{Off: 0, Len: min(size, 4096), Kind: formats.Data})
		if size > 8192 {
			changes = append(changes, formats.Extent{Off: size - 4096, Len: 4096, Kind: formats.Zero})
		}
	}
	plan(r, n, size, changes)
}

// CheckLocate checks img's formats.Locator answers against its ReadAt:
// walking [0, Size) in requests of n bytes, every answer covers a prefix of
// 0 < Len <= the bytes asked, a located prefix reads from R at Off exactly
// as ReadAt of the image reads it (whatever the extents say of the range),
// and every range the image's extents call Data is located unless
// notLocated says it may not be (resident data, a
// compressed grain, a device behind an aligned-read layer). It returns the
// bytes located.
func CheckLocate(t testing.TB, img formats.Image, n int64, notLocated func(off int64) bool) int64 {
	t.Helper()
	lc, ok := img.(formats.Locator)
	if !ok {
		t.Fatalf("%T is not a formats.Locator", img)
	}
	size := img.Size()
	var located int64
	got, want := make([]byte, 0, 1<<20), make([]byte, 0, 1<<20)
	for off := int64(0); off < size; {
		ask := min(n, size-off)
		loc, err := lc.Locate(off, ask)
		if err != nil {
			t.Fatalf("Locate(%d, %d): %v", off, ask, err)
		}
		if loc.Len <= 0 || loc.Len > ask {
			t.Fatalf("Locate(%d, %d) answers for %d bytes", off, ask, loc.Len)
		}
		e, err := img.Extent(off)
		if err != nil {
			t.Fatalf("Extent(%d): %v", off, err)
		}
		if e.Kind == formats.Data && loc.R == nil && (notLocated == nil || !notLocated(off)) {
			t.Fatalf("Locate(%d, %d): data not located", off, ask)
		}
		if loc.R != nil {
			for done := int64(0); done < loc.Len; {
				m := min(int64(cap(got)), loc.Len-done)
				got, want = got[:m], want[:m]
				if k, err := loc.R.ReadAt(got, loc.Off+done); k < len(got) {
					t.Fatalf("Locate(%d, %d) = [%d, +%d) of %T: reading it: %d bytes, %v", off, ask, loc.Off, loc.Len, loc.R, k, err)
				}
				if k, err := img.ReadAt(want, off+done); k < len(want) {
					t.Fatalf("ReadAt(%d, %d): %d bytes, %v", off+done, m, k, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("Locate(%d, %d) = [%d, +%d) of %T: bytes at %d differ from ReadAt's", off, ask, loc.Off, loc.Len, loc.R, off+done)
				}
				done += m
			}
			located += loc.Len
		}
		off += loc.Len
	}
	return located
}
