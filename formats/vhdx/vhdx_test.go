package vhdx

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"encoding/json"
	"errors"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

const platformMade = "../../../shared/testdata/platform-made"

// sample returns the uncompressed bytes of a platform-made sample.
func sample(t testing.TB, name string) []byte {
	t.Helper()
	path := filepath.Join(platformMade, name+".bz2")
	if _, err := os.Stat(path); err != nil {
		path = filepath.Join("/work/shared/testdata/platform-made", name+".bz2")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Skipf("sample %s: %v", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(bzip2.NewReader(f))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func collect(l formats.Layout) []formats.Piece {
	var out []formats.Piece
	for p := range l.Pieces() {
		out = append(out, p)
	}
	return out
}

// batOf decodes the BAT of a planned layout without writing it.
func batOf(t *testing.T, l formats.Layout) []uint64 {
	t.Helper()
	var bat []uint64
	for p := range l.Pieces() {
		if p.Off >= batOff && p.Meta != nil && p.Off < l.(*plan).dataOff {
			for i := 0; i+8 <= len(p.Meta); i += 8 {
				bat = append(bat, binary.LittleEndian.Uint64(p.Meta[i:]))
			}
		}
	}
	return bat
}

func TestPlanUnit(t *testing.T) {
	bs := int64(DefaultBlockSize)
	cases := []struct {
		name     string
		size     int64
		ext      []formats.Extent
		opts     Options
		wantBAT  map[int]uint64 // entry index → value (others must be ZERO)
		wantSize int64
		wantBATs int
	}{
		{
			name: "empty 1 MiB", size: sMiB,
			wantBAT: map[int]uint64{}, wantSize: 4 * sMiB, wantBATs: 1,
		},
		{
			name: "data straddles blocks 1 and 2", size: 4 * bs,
			ext:      []formats.Extent{{Off: 2*bs - 512, Len: 1024, Kind: formats.Data}, {Off: 3 * bs, Len: bs, Kind: formats.Zero}},
			wantBAT:  map[int]uint64{1: 4*uint64(sMiB) | 6, 2: (4*uint64(sMiB) + uint64(bs)) | 6},
			wantSize: 4*sMiB + 2*bs, wantBATs: 4,
		},
		{
			name: "two extents share a block", size: 2 * bs,
			ext:      []formats.Extent{{Off: 0, Len: 512, Kind: formats.Data}, {Off: 1024, Len: 512, Kind: formats.Data}},
			wantBAT:  map[int]uint64{0: 4*uint64(sMiB) | 6},
			wantSize: 4*sMiB + bs, wantBATs: 2,
		},
		{
			// 1 MiB blocks, 512-byte sectors: chunk ratio 4096, so entry
			// 4096 is a sector bitmap entry and block 4096 is entry 4097.
			name: "sector bitmap entry", size: 4097 * sMiB, opts: Options{BlockSize: sMiB},
			ext:      []formats.Extent{{Off: 4096 * sMiB, Len: sMiB, Kind: formats.Data}},
			wantBAT:  map[int]uint64{4096: 0, 4097: 4*uint64(sMiB) | 6},
			wantSize: 4*sMiB + sMiB, wantBATs: 4098,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := Plan(c.size, c.ext, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			if l.FileSize() != c.wantSize {
				t.Errorf("FileSize %d, want %d", l.FileSize(), c.wantSize)
			}
			bat := batOf(t, l)
			if len(bat) != c.wantBATs {
				t.Fatalf("%d BAT entries, want %d", len(bat), c.wantBATs)
			}
			for i, v := range bat {
				want, ok := c.wantBAT[i]
				if !ok {
					want = stateZero
				}
				if v != want {
					t.Errorf("BAT[%d] = %#x, want %#x", i, v, want)
				}
			}
			var prev int64
			for _, p := range collect(l) {
				if p.Off < prev || p.Off+p.Len > l.FileSize() {
					t.Fatalf("piece [%d, +%d) out of order or beyond %d", p.Off, p.Len, l.FileSize())
				}
				prev = p.Off + p.Len
			}
		})
	}

	bad := []struct {
		name string
		size int64
		ext  []formats.Extent
		opts Options
	}{
		{"zero size", 0, nil, Options{}},
		{"odd size", sMiB + 1, nil, Options{}},
		{"4K sectors, 512-byte multiple", sMiB + 512, nil, Options{LogicalSectorSize: 4096}},
		{"block size", sMiB, nil, Options{BlockSize: 3 * sMiB}},
		{"too large", MaxSize + 512, nil, Options{}},
		{"overlap", sMiB, []formats.Extent{{Off: 0, Len: 1024, Kind: formats.Data}, {Off: 512, Len: 512, Kind: formats.Data}}, Options{}},
		{"beyond end", sMiB, []formats.Extent{{Off: sMiB - 512, Len: 1024, Kind: formats.Data}}, Options{}},
		{"bad kind", sMiB, []formats.Extent{{Off: 0, Len: 512}}, Options{}},
	}
	for _, c := range bad {
		t.Run("refuse "+c.name, func(t *testing.T) {
			_, err := Plan(c.size, c.ext, c.opts)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

// TestPlanMemory plans a 2000 GiB disk with scattered data and checks the
// plan and a full walk of its pieces allocate little.
func TestPlanMemory(t *testing.T) {
	size := 2000 * sGiB
	s := synth.New(size, synth.Patterns[3].Make(size, 10*sMiB, rand.New(rand.NewPCG(1, 2))), 1)
	allocs := testing.AllocsPerRun(1, func() {
		l, err := Plan(size, s.Ext, Options{})
		if err != nil {
			t.Fatal(err)
		}
		for range l.Pieces() {
		}
	})
	if allocs > 1000 {
		t.Errorf("%v allocations", allocs)
	}
}

func TestReadSamples(t *testing.T) {
	t.Run("iotest-dynamic-1G", func(t *testing.T) {
		b := sample(t, "iotest-dynamic-1G.vhdx")
		if int64(len(b)) != sampleSizes["iotest-dynamic-1G.vhdx"] {
			t.Errorf("sample is %d bytes; update sampleSizes", len(b))
		}
		img, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		if img.Size() != sGiB || img.BlockSize() != 32*sMiB || img.LogicalSectorSize() != 512 || img.PhysicalSectorSize() != 4096 {
			t.Errorf("size %d block %d sectors %d/%d", img.Size(), img.BlockSize(), img.LogicalSectorSize(), img.PhysicalSectorSize())
		}
		ext, err := formats.Extents(img)
		if err != nil {
			t.Fatal(err)
		}
		want := []formats.Extent{{Off: 0, Len: 96 * sMiB, Kind: formats.Data}, {Off: 96 * sMiB, Len: sGiB - 96*sMiB, Kind: formats.Zero}}
		if !equalExtents(ext, want) {
			t.Errorf("extents %v, want %v", ext, want)
		}
		compareWithQemu(t, "vhdx", b, img)
	})
	t.Run("test-disk2vhd", func(t *testing.T) {
		b := sample(t, "test-disk2vhd.vhdx")
		if int64(len(b)) != sampleSizes["test-disk2vhd.vhdx"] {
			t.Errorf("sample is %d bytes; update sampleSizes", len(b))
		}
		img, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		if img.Size() != 256*sMiB || img.BlockSize() != 2*sMiB {
			t.Errorf("size %d block %d", img.Size(), img.BlockSize())
		}
		ext, err := formats.Extents(img)
		if err != nil {
			t.Fatal(err)
		}
		if len(ext) != 1 || ext[0].Kind != formats.Data {
			t.Errorf("extents %v, want one data run", ext)
		}
		compareWithQemu(t, "vhdx", b, img)
	})
	t.Run("iotest-dirtylog-10G-4M refused", func(t *testing.T) {
		b := sample(t, "iotest-dirtylog-10G-4M.vhdx")
		if int64(len(b)) != sampleSizes["iotest-dirtylog-10G-4M.vhdx"] {
			t.Errorf("sample is %d bytes; update sampleSizes", len(b))
		}
		_, err := Open(bytes.NewReader(b), int64(len(b)))
		if !errors.Is(err, ErrDirtyLog) {
			t.Fatalf("err = %v, want ErrDirtyLog", err)
		}
		var e *Error
		if !errors.As(err, &e) || e.Field != "LogGuid" || (e.Off != header1Off && e.Off != header2Off) {
			t.Errorf("error %q does not name the header's LogGuid", err)
		}
		t.Log(err)
	})
	t.Run("corrupt checksums", func(t *testing.T) {
		b := sample(t, "iotest-dynamic-1G.vhdx")
		b[header1Off+100]++ // header 1 bad: header 2 still current
		if _, err := Open(bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatalf("one bad header: %v", err)
		}
		b[header2Off+100]++
		_, err := Open(bytes.NewReader(b), int64(len(b)))
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("two bad headers: err = %v, want ErrCorrupt", err)
		}
		t.Log(err)
	})
}

func equalExtents(a, b []formats.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// compareWithQemu converts the image to raw with qemu-img and compares our
// reader with it.
func compareWithQemu(t *testing.T, format string, file []byte, img formats.Image) {
	t.Helper()
	oracle.Find(t, "qemu-img")
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out.raw")
	if err := os.WriteFile(in, file, 0o644); err != nil {
		t.Fatal(err)
	}
	oracle.Run(t, "qemu-img", "convert", "-f", format, "-O", "raw", in, out)
	raw, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	b1, b2 := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < img.Size(); off += int64(len(b1)) {
		n, err := img.ReadAt(b1, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		m, _ := raw.ReadAt(b2[:n], off)
		if m != n || !bytes.Equal(b1[:n], b2[:n]) {
			t.Fatalf("reader and qemu-img differ in the 4 MiB at %d", off)
		}
	}
}

// qemuCheck runs the oracles on one output file.
func qemuCheck(t *testing.T, path string, size int64) {
	t.Helper()
	oracle.Run(t, "qemu-img", "check", "-f", "vhdx", path)
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	if err := json.Unmarshal(oracle.Run(t, "qemu-img", "info", "--output=json", path), &info); err != nil {
		t.Fatal(err)
	}
	if info.VirtualSize != size || info.Format != "vhdx" {
		t.Errorf("qemu-img info: %s, %d bytes; want vhdx, %d", info.Format, info.VirtualSize, size)
	}
}

// vhdiSize checks the media size libvhdi reads.
func vhdiSize(t *testing.T, path string, size int64) {
	t.Helper()
	out := oracle.Run(t, "vhdiinfo", path)
	m := regexp.MustCompile(`Media size\s*:.*\((\d+) bytes\)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("vhdiinfo: no media size in\n%s", out)
	}
	if n, _ := strconv.ParseInt(string(m[1]), 10, 64); n != size {
		t.Errorf("vhdiinfo media size %d, want %d", n, size)
	}
}

// checks says which oracles judge a round trip.
type checks struct {
	qemu    bool // qemu-img check and info (qemu 7.2 cannot open 4096-byte logical sectors)
	compare bool // qemu-img compare with the raw source (reads every byte through qemu)
	mount   bool // vhdimount, then cmp with the raw source
	stream  bool // also read the stream output back with our reader
}

func TestRoundTrip(t *testing.T) {
	all := checks{qemu: true, compare: true, mount: true, stream: true}
	sizes := []struct {
		name         string
		size, budget int64 // budget: data bytes of the alternating and random synth.Patterns
		checks       checks
	}{
		{"1MiB", sMiB, sMiB, all},
		{"1MiB+512", sMiB + 512, sMiB + 512, all},
		{"100MiB+7s", 100*sMiB + 7*512, 100*sMiB + 7*512, all},
		// qemu reads a 2 GiB VHDX at about 400 MB/s: compare only the
		// random pattern and, without -short, the full disk.
		{"2GiB", 2 * sGiB, 256 * sMiB, checks{qemu: true}},
		{"2000GiB", 2000 * sGiB, 10 * sMiB, checks{qemu: true, stream: true}},
	}
	for _, sz := range sizes {
		for pi, pat := range synth.Patterns {
			t.Run(sz.name+"/"+pat.Name, func(t *testing.T) {
				budget, c := sz.budget, sz.checks
				if pat.Name == "full" {
					budget = sz.size
					if sz.size > 2*sGiB {
						budget = sz.budget
					}
					if budget > 256*sMiB && testing.Short() {
						t.Skip("short: 2 GiB of data")
					}
				}
				if sz.size == 2*sGiB && pat.Name != "empty" && pat.Name != "alternating" {
					c.compare = true
				}
				rng := rand.New(rand.NewPCG(uint64(sz.size), uint64(pi)))
				s := synth.New(sz.size, pat.Make(sz.size, budget, rng), uint64(pi)+7)
				roundTrip(t, s, Options{Identity: [16]byte{byte(pi)}}, c)
			})
		}
	}
	t.Run("2TiB+1MiB", func(t *testing.T) {
		size := 2<<40 + sMiB
		s := synth.New(size, []formats.Extent{
			{Off: 0, Len: sMiB, Kind: formats.Data},
			{Off: 1 << 40, Len: 1 << 39, Kind: formats.Zero},
			{Off: size - sMiB - 4096, Len: sMiB + 4096, Kind: formats.Data},
		}, 99)
		roundTrip(t, s, Options{}, checks{qemu: true, stream: true})
	})
	t.Run("4K sectors, 1 MiB blocks", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 5))
		size := 64*sMiB + 4096
		ext := synth.Patterns[3].Make(size, size, rng)
		var clean []formats.Extent
		var prev int64
		for _, e := range ext { // 4 KiB-align the random runs
			e.Off = (e.Off + 4095) &^ 4095
			e.Len &^= 4095
			if e.Len > 0 && e.Off >= prev && e.End() <= size {
				clean = append(clean, e)
				prev = e.End()
			}
		}
		roundTrip(t, synth.New(size, clean, 3), Options{BlockSize: sMiB, LogicalSectorSize: 4096, PhysicalSectorSize: 512}, checks{mount: true, stream: true})
	})
}

func roundTrip(t *testing.T, s *synth.Image, opts Options, c checks) {
	t0 := time.Now()
	l, err := Plan(s.Len, s.Ext, opts)
	if err != nil {
		t.Fatal(err)
	}
	o, _ := opts.withDefaults()
	// Exact accounting: one block per block touched by data.
	touched := map[int64]bool{}
	nData := 0
	for _, e := range s.Ext {
		if e.Kind == formats.Data {
			nData++
			for b := e.Off / o.BlockSize; b <= (e.End()-1)/o.BlockSize; b++ {
				touched[b] = true
			}
		}
	}
	p := l.(*plan)
	if want := p.dataOff + int64(len(touched))*o.BlockSize; l.FileSize() != want {
		t.Errorf("FileSize %d, want %d", l.FileSize(), want)
	}
	// Thin bound: the data, 1 %, the structures before the blocks, and at
	// most two partly used blocks per data extent.
	alloc := s.DataBytes()
	if bound := alloc + alloc/100 + p.dataOff + 2*int64(nData)*o.BlockSize; l.FileSize() > bound {
		t.Errorf("FileSize %d > bound %d", l.FileSize(), bound)
	}

	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	file, _ := synth.WriteBoth(t, dir, "vhdx", l, s, c.stream, func(r io.ReaderAt, size int64) (formats.Image, error) { return Open(r, size) })
	tw := time.Since(t0)
	tr := time.Since(t0)

	vhdiSize(t, file, s.Len)
	if c.qemu {
		qemuCheck(t, file, s.Len)
	}
	if c.compare || c.mount {
		synth.WriteRaw(t, raw, s)
	}
	if c.compare {
		oracle.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "vhdx", raw, file)
	}
	if c.mount {
		mountCompare(t, "vhdimount", file, raw)
	}
	t.Logf("%d bytes virtual, %d data, file %d: write+stream %v, read back %v, oracles %v",
		s.Len, alloc, l.FileSize(), tw.Round(time.Millisecond), (tr - tw).Round(time.Millisecond), (time.Since(t0) - tr).Round(time.Millisecond))
}

// mountCompare mounts image with a libyal FUSE tool and compares the disk
// it exposes with the raw file.
func mountCompare(t *testing.T, tool, image, raw string) {
	t.Helper()
	fuse := oracle.Find(t, "fusermount")
	oracle.Find(t, tool)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		oracle.Unavailable(t, "no /dev/fuse for "+tool)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	oracle.Run(t, tool, image, mnt)
	defer oracle.Run(t, fuse, "-u", mnt)
	ents, err := os.ReadDir(mnt)
	if err != nil || len(ents) != 1 {
		t.Fatalf("%s exposes %v (%v), want one file", tool, ents, err)
	}
	synth.SameFiles(t, filepath.Join(mnt, ents[0].Name()), raw)
}

// Units, from the shared test support.
const (
	sKiB = synth.KiB
	sMiB = synth.MiB
	sGiB = synth.GiB
)
