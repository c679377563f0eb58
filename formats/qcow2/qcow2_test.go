package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

// image assembles a planned layout in memory (small plans only).
func image(t *testing.T, l formats.Layout, s formats.Image) []byte {
	t.Helper()
	b := make([]byte, l.FileSize())
	for p := range l.Pieces() {
		switch {
		case p.Meta != nil:
			copy(b[p.Off:], p.Meta)
		case p.Src >= 0:
			if _, err := s.ReadAt(b[p.Off:p.Off+p.Len], p.Src); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
	}
	return b
}

func TestPlanUnit(t *testing.T) {
	const cs = 64 << 10
	cases := []struct {
		name     string
		size     int64
		ext      []formats.Extent
		opts     Options
		clusters int64            // clusters in the file
		l2       map[int64]uint64 // guest cluster → L2 entry (others zero)
	}{
		{name: "empty", size: sMiB, clusters: 4},
		{
			name: "data straddles clusters", size: sMiB,
			ext:      []formats.Extent{{Off: cs - 512, Len: 1024, Kind: formats.Data}},
			clusters: 4 + 1 + 2,
			l2:       map[int64]uint64{0: 5*cs | flagCopied, 1: 6*cs | flagCopied},
		},
		{
			name: "zero cluster v3, data wins a shared cluster", size: sMiB, opts: Options{ZeroClusters: true},
			ext: []formats.Extent{
				{Off: 0, Len: cs + 512, Kind: formats.Zero},
				{Off: cs + 512, Len: 512, Kind: formats.Data},
				{Off: cs + 1024, Len: 2 * cs, Kind: formats.Zero},
			},
			clusters: 4 + 1 + 1,
			l2:       map[int64]uint64{0: flagZero, 1: 5*cs | flagCopied, 2: flagZero, 3: flagZero},
		},
		{
			name: "zero is unallocated in v3 by default", size: sMiB,
			ext:      []formats.Extent{{Off: 0, Len: sMiB, Kind: formats.Zero}},
			clusters: 4,
		},
		{
			name: "zero is unallocated in v2", size: sMiB, opts: Options{Compat: CompatV2, ZeroClusters: true},
			ext:      []formats.Extent{{Off: 0, Len: sMiB, Kind: formats.Zero}},
			clusters: 4,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := synth.New(c.size, c.ext, 1)
			l, err := Plan(c.size, c.ext, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			if l.FileSize() != c.clusters*cs {
				t.Errorf("FileSize %d, want %d clusters", l.FileSize(), c.clusters)
			}
			b := image(t, l, s)
			img, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			for gc := range (c.size + cs - 1) / cs {
				var v uint64
				if l2 := img.l1[0]; l2 != 0 {
					v = binary.BigEndian.Uint64(b[l2+gc*8:])
				}
				if v != c.l2[gc] {
					t.Errorf("L2[%d] = %#x, want %#x", gc, v, c.l2[gc])
				}
			}
			synth.SameImage(t, img, s)
			checkRefcounts(t, b, cs)
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
		{"cluster size 3 KiB", sMiB, nil, Options{ClusterSize: 3072}},
		{"cluster size 4 MiB", sMiB, nil, Options{ClusterSize: 4 << 20}},
		{"compat", sMiB, nil, Options{Compat: "2"}},
		{"L1 beyond qemu's limit", 1 << 50, nil, Options{ClusterSize: 512}},
		{"overlap", sMiB, []formats.Extent{{Off: 0, Len: 1024, Kind: formats.Data}, {Off: 512, Len: 512, Kind: formats.Data}}, Options{}},
		{"beyond end", sMiB, []formats.Extent{{Off: sMiB - 512, Len: 1024, Kind: formats.Data}}, Options{}},
	}
	for _, c := range bad {
		t.Run("refuse "+c.name, func(t *testing.T) {
			if _, err := Plan(c.size, c.ext, c.opts); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

// checkRefcounts verifies, in an assembled image, that every cluster of the
// file has refcount 1 and no cluster beyond it is counted.
func checkRefcounts(t *testing.T, b []byte, cs int64) {
	t.Helper()
	be := binary.BigEndian
	rt := int64(be.Uint64(b[hRefcountOffset:]))
	rtc := int64(be.Uint32(b[hRefcountClusters:]))
	per := cs / 2
	total := int64(len(b)) / cs
	for k := range rtc * cs / 8 {
		blk := int64(be.Uint64(b[rt+k*8:]))
		for i := range per {
			c := k*per + i
			var v uint16
			if blk != 0 {
				v = be.Uint16(b[blk+i*2:])
			}
			if want := uint16(min(1, max(0, total-c))); v != want {
				t.Fatalf("refcount of cluster %d = %d, want %d", c, v, want)
			}
		}
	}
}

// TestRefcountFixedPoint plans with 512-byte clusters (256 refcounts per
// block, 64 table entries per cluster) across the sizes where the refcount
// blocks and table grow, and checks they are the smallest that cover the
// file, themselves included.
func TestRefcountFixedPoint(t *testing.T) {
	for n := int64(0); n < 40000; n += 1 + n/50 {
		size := max(512, n*512)
		var ext []formats.Extent
		if n > 0 {
			ext = []formats.Extent{{Off: 0, Len: n * 512, Kind: formats.Data}}
		}
		l, err := Plan(size, ext, Options{ClusterSize: 512})
		if err != nil {
			t.Fatal(err)
		}
		p := l.(*plan)
		if p.rbClusters*p.rcPerBlock < p.total || (p.rbClusters-1)*p.rcPerBlock >= p.total {
			t.Fatalf("n=%d: %d refcount blocks for %d clusters", n, p.rbClusters, p.total)
		}
		if p.rtClusters*p.cs/8 < p.rbClusters || (p.rtClusters-1)*p.cs/8 >= p.rbClusters {
			t.Fatalf("n=%d: %d table clusters for %d blocks", n, p.rtClusters, p.rbClusters)
		}
	}
}

// TestPlanMemory plans a 2000 GiB disk and walks its pieces.
func TestPlanMemory(t *testing.T) {
	size := 2000 * sGiB
	s := synth.New(size, synth.Patterns[3].Make(size, 10*sMiB, rand.New(rand.NewPCG(1, 2))), 1)
	var l formats.Layout
	allocs := testing.AllocsPerRun(1, func() {
		var err error
		if l, err = Plan(size, s.Ext, Options{}); err != nil {
			t.Fatal(err)
		}
		for range l.Pieces() {
		}
	})
	t.Logf("%d extents, file %d bytes, %v allocations", len(s.Ext), l.FileSize(), allocs)
	if allocs > 2000 {
		t.Errorf("%v allocations", allocs)
	}
}

// qemuCheck runs qemu-img check, info and qcowinfo on one output file.
func qemuCheck(t *testing.T, path string, size int64, compat string) {
	t.Helper()
	out := oracle.Run(t, "qemu-img", "check", "-f", "qcow2", path)
	if !bytes.Contains(out, []byte("No errors were found")) || bytes.Contains(out, []byte("leaked")) {
		t.Errorf("qemu-img check:\n%s", out)
	}
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
		Specific    struct {
			Data struct {
				Compat       string `json:"compat"`
				RefcountBits int    `json:"refcount-bits"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(oracle.Run(t, "qemu-img", "info", "--output=json", path), &info); err != nil {
		t.Fatal(err)
	}
	if info.VirtualSize != size || info.Format != "qcow2" || info.Specific.Data.Compat != compat || info.Specific.Data.RefcountBits != 16 {
		t.Errorf("qemu-img info: %+v; want qcow2 %s, %d bytes, 16-bit refcounts", info, compat, size)
	}
	qi := oracle.Run(t, "qcowinfo", path)
	m := regexp.MustCompile(`Media size\s*:.*\((\d+) bytes\)`).FindSubmatch(qi)
	if m == nil {
		t.Fatalf("qcowinfo: no media size in\n%s", qi)
	}
	if n, _ := strconv.ParseInt(string(m[1]), 10, 64); n != size {
		t.Errorf("qcowinfo media size %d, want %d", n, size)
	}
	wantVersion := map[string]string{CompatV3: "3", CompatV2: "2"}[compat]
	if !regexp.MustCompile(`Format version\s*:\s*` + wantVersion + `\b`).Match(qi) {
		t.Errorf("qcowinfo does not report version %s:\n%s", wantVersion, qi)
	}
}

type checks struct {
	mount  bool // qcowmount, then cmp with the raw source
	stream bool // also read the stream output back with our reader
}

func TestRoundTrip(t *testing.T) {
	sizes := []struct {
		name         string
		size, budget int64 // budget: data bytes of the alternating and random synth.Patterns
		checks       checks
	}{
		{"1MiB", sMiB, sMiB, checks{true, true}},
		{"1MiB+512", sMiB + 512, sMiB + 512, checks{true, true}},
		{"100MiB+7s", 100*sMiB + 7*512, 100*sMiB + 7*512, checks{true, true}},
		{"2GiB", 2 * sGiB, 256 * sMiB, checks{}},
		{"2000GiB", 2000 * sGiB, 10 * sMiB, checks{stream: true}},
	}
	for _, sz := range sizes {
		for pi, pat := range synth.Patterns {
			for _, compat := range []string{CompatV3, CompatV2} {
				if compat == CompatV2 && pi%2 == 0 && sz.size > 2*sGiB {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/compat=%s", sz.name, pat.Name, compat), func(t *testing.T) {
					budget := sz.budget
					if pat.Name == "full" {
						budget = sz.size
						if sz.size > 2*sGiB {
							budget = sz.budget
						}
						if budget > 256*sMiB && (testing.Short() || compat == CompatV2) {
							t.Skip("2 GiB of data: once, and not with -short")
						}
					}
					rng := rand.New(rand.NewPCG(uint64(sz.size), uint64(pi)))
					s := synth.New(sz.size, pat.Make(sz.size, budget, rng), uint64(pi)+7)
					// Every other pattern flags Zero extents as v3 zero clusters.
					roundTrip(t, s, Options{Compat: compat, ZeroClusters: compat == CompatV3 && pi%2 == 1}, sz.checks)
				})
			}
		}
	}
	t.Run("2TiB+1MiB", func(t *testing.T) {
		size := 2<<40 + sMiB
		s := synth.New(size, []formats.Extent{
			{Off: 0, Len: sMiB, Kind: formats.Data},
			{Off: 1 << 40, Len: 1 << 35, Kind: formats.Zero},
			{Off: size - sMiB - 4096, Len: sMiB + 4096, Kind: formats.Data},
		}, 99)
		roundTrip(t, s, Options{}, checks{stream: true})
	})
	for _, cs := range []int64{512, 4096, 2 << 20} {
		for _, compat := range []string{CompatV3, CompatV2} {
			t.Run(fmt.Sprintf("cluster %d/compat=%s", cs, compat), func(t *testing.T) {
				size := 64*sMiB + 7*512
				rng := rand.New(rand.NewPCG(5, uint64(cs)))
				s := synth.New(size, synth.Patterns[3].Make(size, size, rng), 3)
				roundTrip(t, s, Options{ClusterSize: cs, Compat: compat}, checks{mount: true, stream: true})
			})
		}
	}
}

func roundTrip(t *testing.T, s *synth.Image, opts Options, c checks) {
	t0 := time.Now()
	l, err := Plan(s.Len, s.Ext, opts)
	if err != nil {
		t.Fatal(err)
	}
	o, _, _ := opts.withDefaults()
	cs := o.ClusterSize
	p := l.(*plan)
	// Exact accounting of data clusters.
	touched := map[int64]bool{}
	nData := int64(0)
	for _, e := range s.Ext {
		if e.Kind == formats.Data {
			nData++
			for c := e.Off / cs; c <= (e.End()-1)/cs; c++ {
				touched[c] = true
			}
		}
	}
	if p.dataClusters != int64(len(touched)) || l.FileSize() != p.dataOff+p.dataClusters*cs {
		t.Errorf("%d data clusters, file %d; want %d clusters after 0x%x", p.dataClusters, l.FileSize(), len(touched), p.dataOff)
	}
	// Thin bound: data + 1 % + the metadata a fully allocated image of
	// this size would need + two partial clusters per extent.
	alloc := s.DataBytes()
	meta := (1 + p.rtClusters + p.rbClusters + p.l1Clusters + p.l2Tables) * cs
	if bound := alloc + alloc/100 + meta + 2*nData*cs; l.FileSize() > bound {
		t.Errorf("FileSize %d > bound %d", l.FileSize(), bound)
	}
	if fullL2 := (s.Len + cs*cs/8 - 1) / (cs * cs / 8); p.l2Tables > fullL2 {
		t.Errorf("%d L2 tables, a full disk needs %d", p.l2Tables, fullL2)
	}

	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	file, _ := synth.WriteBoth(t, dir, "qcow2", l, s, c.stream, func(r io.ReaderAt, size int64) (formats.Image, error) { return Open(r, size) })
	tw := time.Since(t0)
	tr := time.Since(t0)

	qemuCheck(t, file, s.Len, o.Compat)
	synth.WriteRaw(t, raw, s)
	oracle.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, file)
	// libqcow 20201213 ignores the zero flag: it reads a zero cluster
	// without a host offset as the header cluster (and a qemu-made one with
	// an offset as the stale data there), so it can judge only images
	// without zero clusters.
	if c.mount && (o.Compat == CompatV2 || !hasZero(s)) {
		mountCompare(t, "qcowmount", file, raw)
	}
	t.Logf("%d bytes virtual, %d data, file %d (%d L2 tables): write+stream %v, read back %v, oracles %v",
		s.Len, alloc, l.FileSize(), p.l2Tables, tw.Round(time.Millisecond), (tr - tw).Round(time.Millisecond), (time.Since(t0) - tr).Round(time.Millisecond))
}

func hasZero(s *synth.Image) bool {
	for _, e := range s.Ext {
		if e.Kind == formats.Zero {
			return true
		}
	}
	return false
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

// TestReadQemuImages reads images qemu-img wrote and refuses the features
// this package does not read.
func TestReadQemuImages(t *testing.T) {
	oracle.Find(t, "qemu-img")
	dir := t.TempDir()
	size := 64*sMiB + 3*512
	rng := rand.New(rand.NewPCG(9, 9))
	s := synth.New(size, synth.Patterns[3].Make(size, size, rng), 5)
	raw := filepath.Join(dir, "src.raw")
	synth.WriteRaw(t, raw, s)
	for _, c := range []struct {
		name string
		args []string
		want error
	}{
		{"v3", []string{"-o", "compat=1.1"}, nil},
		{"v2", []string{"-o", "compat=0.10"}, nil},
		{"4K clusters", []string{"-o", "cluster_size=4096"}, nil},
		{"preallocated metadata", []string{"-o", "preallocation=metadata"}, nil},
		{"compressed", []string{"-c"}, ErrUnsupported},
		{"zstd", []string{"-c", "-o", "compression_type=zstd"}, ErrUnsupported},
		{"extended L2", []string{"-o", "extended_l2=on"}, ErrUnsupported},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "x.qcow2")
			if _, stderr, err := oracle.RunErr(t, "qemu-img", append(append([]string{"convert", "-f", "raw", "-O", "qcow2"}, c.args...), raw, out)...); err != nil {
				if strings.Contains(string(stderr), "not supported") || strings.Contains(string(stderr), "Invalid parameter") {
					t.Skipf("this qemu-img cannot write it: %s", stderr)
				}
				t.Fatalf("qemu-img convert: %v: %s", err, stderr)
			}
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, _ := f.Stat()
			img, err := Open(f, fi.Size())
			if err == nil {
				_, err = formats.Extents(img)
			}
			if c.want != nil {
				if !errors.Is(err, c.want) {
					t.Fatalf("err = %v, want %v", err, c.want)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			synth.SameImage(t, img, s)
			// And the other way: everything we call non-data reads as zero.
			b := make([]byte, size)
			if _, err := img.ReadAt(b, 0); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			w := make([]byte, size)
			s.ReadAt(w, 0)
			if !bytes.Equal(b, w) {
				t.Fatal("content differs")
			}
		})
	}
	t.Run("backing file", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "overlay.qcow2")
		oracle.Run(t, "qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", raw, out)
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fi, _ := f.Stat()
		_, err = Open(f, fi.Size())
		var e *Error
		if !errors.Is(err, ErrUnsupported) || !errors.As(err, &e) || e.Field != "backing_file_offset" {
			t.Fatalf("err = %v, want ErrUnsupported naming backing_file_offset", err)
		}
		t.Log(err)
	})
}

func TestReadRefusesCorruption(t *testing.T) {
	size := 4 * sMiB
	s := synth.New(size, []formats.Extent{{Off: 0, Len: sMiB, Kind: formats.Data}, {Off: sMiB, Len: sMiB, Kind: formats.Zero}}, 2)
	l, err := Plan(size, s.Ext, Options{})
	if err != nil {
		t.Fatal(err)
	}
	good := image(t, l, s)
	p := l.(*plan)
	for _, c := range []struct {
		name  string
		patch func(b []byte)
		want  error
	}{
		{"magic", func(b []byte) { b[0] = 'X' }, ErrCorrupt},
		{"encryption", func(b []byte) { binary.BigEndian.PutUint32(b[hCryptMethod:], 1) }, ErrUnsupported},
		{"L1 beyond file", func(b []byte) { binary.BigEndian.PutUint64(b[hL1Offset:], 1<<40) }, ErrCorrupt},
		{"L1 too small", func(b []byte) { binary.BigEndian.PutUint32(b[hL1Size:], 0) }, ErrCorrupt},
		{"L2 pointer beyond file", func(b []byte) { binary.BigEndian.PutUint64(b[p.l1Off:], 1<<40|flagCopied) }, ErrCorrupt},
		{"compressed cluster", func(b []byte) { b[p.l2Off] |= 0x40 }, ErrUnsupported},
		{"data beyond file", func(b []byte) { binary.BigEndian.PutUint64(b[p.l2Off:], 1<<40|flagCopied) }, ErrCorrupt},
		{"unknown incompatible feature", func(b []byte) { b[hIncompatible+7] |= 0x20 }, ErrUnsupported},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(good)
			c.patch(b)
			img, err := Open(bytes.NewReader(b), int64(len(b)))
			if err == nil {
				_, err = formats.Extents(img)
			}
			if err == nil {
				_, err = img.ReadAt(make([]byte, size), 0)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%v is not an *Error", err)
			}
			t.Log(err)
		})
	}
}

// Units, from the shared test support.
const (
	sKiB = synth.KiB
	sMiB = synth.MiB
	sGiB = synth.GiB
)
