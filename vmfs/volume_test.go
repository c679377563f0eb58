package vmfs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

// Synthetic volumes are built once per test binary by package testimages,
// whose manifest is the ground truth.

var (
	tmpRoot  string
	builtMu  sync.Mutex
	builtVol = map[string]*built{}
)

type built struct {
	images []string
	m      *testimages.Manifest
	err    error
}

func TestMain(m *testing.M) {
	var err error
	tmpRoot, err = os.MkdirTemp("", "vmfs-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// volumeSpecs are the layouts the tests cover, by name.
func volumeSpecs() map[string]testimages.Spec {
	specs := map[string]testimages.Spec{}
	for _, ver := range []int{3, 5, 6} {
		specs[fmt.Sprintf("sample%d", ver)] = testimages.Sample(ver)
		specs[fmt.Sprintf("pointer%d", ver)] = testimages.PointerSpec(ver)
		specs[fmt.Sprintf("spanned%d", ver)] = testimages.SpannedSpec(ver)
	}
	mbr := testimages.Sample(5)
	mbr.Partition, mbr.Seed, mbr.Disks, mbr.Snapshots = "mbr", 51, nil, nil
	specs["mbr5"] = mbr
	gpt := testimages.Sample(6)
	gpt.Partition, gpt.Seed, gpt.Disks, gpt.Snapshots, gpt.LiveHeartbeat = "gpt", 61, nil, nil, true
	specs["gpt6"] = gpt
	live := testimages.Sample(5)
	live.Seed, live.Disks, live.Snapshots, live.LiveHeartbeat = 52, nil, nil, true
	specs["live5"] = live
	// Many sub-block files in one directory: SB resources past 15 (the
	// dense-SBPC address bits on VMFS5) and several directory blocks on
	// VMFS6. (testimages does not generate link groups: names sharing a
	// hash slot are covered by TestHashedDirectory only.)
	for _, ver := range []int{5, 6} {
		s := testimages.Spec{VMFS: ver, Seed: int64(ver)*100 + 7, Label: "many"}
		for i := range 40 {
			s.Files = append(s.Files, testimages.FileSpec{Path: fmt.Sprintf("many/f%02d.bin", i), Size: int64(2000 + 97*i), Layout: "subblock"})
		}
		specs[fmt.Sprintf("many%d", ver)] = s
	}
	span3 := testimages.Sample(6)
	span3.Extents, span3.Seed, span3.Disks, span3.Snapshots = 3, 63, span3.Disks[:2], nil
	specs["span3x6"] = span3
	return specs
}

// buildVolume builds (once) the named volume; it skips the test when the
// generator cannot build it.
func buildVolume(t *testing.T, name string) *built {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	b, ok := builtVol[name]
	if !ok {
		spec, ok := volumeSpecs()[name]
		if !ok {
			t.Fatalf("no volume spec %q", name)
		}
		b = &built{}
		dir := filepath.Join(tmpRoot, name)
		func() {
			defer func() {
				if r := recover(); r != nil {
					b.err = fmt.Errorf("testimages.Build panicked: %v", r)
				}
			}()
			if b.err = os.MkdirAll(dir, 0o755); b.err != nil {
				return
			}
			b.m, b.err = testimages.Build(spec, filepath.Join(dir, "img"))
		}()
		if b.err == nil {
			for _, im := range b.m.Images {
				b.images = append(b.images, filepath.Join(dir, im))
			}
		}
		builtVol[name] = b
	}
	if b.err != nil {
		t.Fatalf("testimages cannot build %s: %v", name, b.err)
	}
	return b
}

func openBuilt(t *testing.T, images []string) *Volume {
	t.Helper()
	v, err := OpenFiles(images...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// readAll reads f with ReadAt in odd-sized chunks.
func readAll(t *testing.T, f *File) []byte {
	t.Helper()
	out := make([]byte, f.Size())
	const chunk = 3<<20 + 4097
	for off := int64(0); off < f.Size(); off += chunk {
		end := min(off+chunk, f.Size())
		n, err := f.ReadAt(out[off:end], off)
		if n != int(end-off) || (err != nil && err != io.EOF) {
			t.Fatalf("%s: ReadAt(%d bytes at %d) = %d, %v", f.Stat().Path, end-off, off, n, err)
		}
	}
	return out
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func kindName(k formats.Kind) string { return k.String() }

// checkManifest compares every file of the manifest with what the volume
// says: type, size, FD address, layout, sha256 of our full read, allocated
// bytes, the Data/Zero/Hole map, symlink targets; and the tree Walk finds.
func checkManifest(t *testing.T, v *Volume, m *testimages.Manifest) {
	t.Helper()
	info := v.Info()
	if info.Version != m.VMFS || info.Label != m.Label || info.UUID != m.UUID || info.Capacity != m.Size {
		t.Errorf("Info = version %d label %q uuid %s capacity %d; manifest: %d %q %s %d",
			info.Version, info.Label, info.UUID, info.Capacity, m.VMFS, m.Label, m.UUID, m.Size)
	}
	want := map[string]bool{}
	for _, mf := range m.Files {
		want[mf.Path] = true
		t.Run(mf.Path, func(t *testing.T) {
			fi, err := v.Stat(mf.Path)
			if err != nil {
				t.Fatal(err)
			}
			switch mf.Type {
			case "dir":
				if !fi.IsDir {
					t.Errorf("type %s, want a directory", fi.Type)
				}
			case "symlink":
				if fi.Type != TypeSymlink {
					t.Errorf("type %s, want symlink", fi.Type)
				}
			default:
				if want := TypeRegular; mf.System {
					if fi.Type != TypeSystem {
						t.Errorf("type %s, want system", fi.Type)
					}
				} else if fi.Type != want {
					t.Errorf("type %s, want file", fi.Type)
				}
			}
			if fi.Size != mf.Size {
				t.Errorf("size %d, want %d", fi.Size, mf.Size)
			}
			if got := fmt.Sprintf("0x%08x", fi.FD); mf.FD != "" && got != mf.FD {
				t.Errorf("FD %s, want %s", got, mf.FD)
			}
			if !mf.System && mf.Layout != "" && fi.Layout() != mf.Layout {
				t.Errorf("layout %s (ZLA 0x%x), want %s", fi.Layout(), fi.ZLA, mf.Layout)
			}
			f, err := v.Open(mf.Path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if mf.SHA256 != "" {
				if got := sha(readAll(t, f)); got != mf.SHA256 {
					t.Errorf("sha256 of our read %s, want %s", got, mf.SHA256)
				}
			}
			if alloc, err := f.Allocated(); err != nil || alloc != mf.Allocated {
				t.Errorf("Allocated() = %d, %v; want %d", alloc, err, mf.Allocated)
			}
			if mf.Map != nil {
				ext, err := formats.Extents(f)
				if err != nil {
					t.Fatal(err)
				}
				var got []testimages.MapRun
				for _, e := range ext {
					got = append(got, testimages.MapRun{Off: e.Off, Len: e.Len, Kind: kindName(e.Kind)})
				}
				if fmt.Sprint(got) != fmt.Sprint(mf.Map) {
					t.Errorf("extents %v, want %v", got, mf.Map)
				}
			}
			if mf.Type == "symlink" {
				if target, err := v.Readlink(mf.Path); err != nil || target != mf.Target {
					t.Errorf("Readlink = %q, %v; want %q", target, err, mf.Target)
				}
			}
		})
	}
	got := map[string]bool{}
	err := v.Walk("", func(p string, fi FileInfo, err error) error {
		if err != nil {
			t.Errorf("Walk %s: %v", p, err)
			return nil
		}
		if p != "." {
			got[p] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range want {
		if !got[p] {
			t.Errorf("Walk misses %s", p)
		}
	}
	for p := range got {
		if !want[p] {
			t.Errorf("Walk finds %s, which the manifest does not list", p)
		}
	}
}

// permutations returns every order of s.
func permutations(s []string) [][]string {
	if len(s) <= 1 {
		return [][]string{append([]string(nil), s...)}
	}
	var out [][]string
	for i := range s {
		rest := append(append([]string(nil), s[:i]...), s[i+1:]...)
		for _, p := range permutations(rest) {
			out = append(out, append([]string{s[i]}, p...))
		}
	}
	return out
}

func TestManifest(t *testing.T) {
	names := make([]string, 0)
	for n := range volumeSpecs() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			b := buildVolume(t, name)
			orders := permutations(b.images)
			for i, imgs := range orders {
				if i > 0 && testing.Short() {
					break
				}
				t.Run(fmt.Sprintf("order%d", i), func(t *testing.T) {
					v := openBuilt(t, imgs)
					if len(imgs) > 1 {
						if got := len(v.Info().Extents); got != len(imgs) {
							t.Errorf("%d extents, want %d", got, len(imgs))
						}
					}
					if i > 0 {
						// Later orders: the tree and the hashes only.
						checkManifest(t, v, b.m)
						return
					}
					checkManifest(t, v, b.m)
				})
			}
		})
	}
}

func TestPartitionsAndHeartbeat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		partOff int64
		live    bool
	}{
		{"mbr5", 1 << 20, false},
		{"gpt6", 1 << 20, true},
		{"live5", 0, true},
		{"sample5", 0, false},
		{"sample6", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := buildVolume(t, tc.name)
			v := openBuilt(t, b.images)
			info := v.Info()
			if got := info.Extents[0].PartitionOffset; got != tc.partOff {
				t.Errorf("partition offset %#x, want %#x", got, tc.partOff)
			}
			if (len(info.LiveHosts) > 0) != tc.live {
				t.Errorf("LiveHosts %v, want live=%v", info.LiveHosts, tc.live)
			}
		})
	}
}

func TestMissingExtent(t *testing.T) {
	for _, name := range []string{"spanned5", "spanned6", "span3x6"} {
		t.Run(name, func(t *testing.T) {
			b := buildVolume(t, name)
			for miss := range b.images {
				imgs := append(append([]string(nil), b.images[:miss]...), b.images[miss+1:]...)
				_, err := OpenFiles(imgs...)
				if !errors.Is(err, ErrMissingExtent) {
					t.Fatalf("without %s: %v, want ErrMissingExtent", b.images[miss], err)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("extent %d of %d", miss, len(b.images))) || !strings.Contains(err.Error(), "logical bytes [0x") {
					t.Errorf("error does not name the extent and range: %v", err)
				}
				t.Logf("without extent %d: %v", miss, err)
				if miss == 0 {
					continue // the FS descriptor lives on extent 0
				}
				v, err := OpenFilesOptions(Options{AllowMissingExtents: true}, imgs...)
				if err != nil {
					t.Fatal(err)
				}
				// Some file must now fail with ErrMissingExtent, none may
				// read garbage: every file either matches or fails.
				failed := 0
				for _, mf := range b.m.Files {
					if mf.SHA256 == "" || mf.Type == "dir" {
						continue
					}
					f, err := v.Open(mf.Path)
					if err != nil {
						if !errors.Is(err, ErrMissingExtent) {
							t.Errorf("%s: %v", mf.Path, err)
						}
						failed++
						continue
					}
					buf := make([]byte, f.Size())
					_, err = f.ReadAt(buf, 0)
					switch {
					case errors.Is(err, ErrMissingExtent):
						failed++
					case err != nil && err != io.EOF:
						t.Errorf("%s: %v", mf.Path, err)
					case sha(buf) != mf.SHA256:
						t.Errorf("%s: wrong data with a missing extent", mf.Path)
					}
				}
				if failed == 0 {
					t.Errorf("no file touches the missing extent %d", miss)
				}
				v.Close()
			}
		})
	}
}

// countingReader counts device reads.
type countingReader struct {
	r     io.ReaderAt
	mu    sync.Mutex
	reads int
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

func (c *countingReader) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

// TestDeviceReads checks that holes and TBZ blocks cost no device read and
// that a whole-file read costs one device read per physically contiguous
// run.
func TestDeviceReads(t *testing.T) {
	for _, name := range []string{"sample5", "sample6", "spanned6"} {
		t.Run(name, func(t *testing.T) {
			b := buildVolume(t, name)
			var devs []Device
			var counters []*countingReader
			for _, p := range b.images {
				fh, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				defer fh.Close()
				st, _ := fh.Stat()
				c := &countingReader{r: fh}
				counters = append(counters, c)
				devs = append(devs, Device{Name: p, R: c, Size: st.Size()})
			}
			v, err := Open(devs...)
			if err != nil {
				t.Fatal(err)
			}
			total := func() (n int) {
				for _, c := range counters {
					n += c.count()
				}
				return n
			}
			checked, reads, skipped := 0, 0, 0
			defer func() {
				t.Logf("%d files read whole in %d device reads; %d hole/TBZ extents read without any", checked, reads, skipped)
			}()
			for _, mf := range b.m.Files {
				if mf.Type != "file" || mf.System || mf.Size == 0 {
					continue
				}
				f, err := v.Open(mf.Path)
				if err != nil {
					t.Fatal(err)
				}
				// Warm the metadata cache, then count.
				if _, err := formats.Extents(f); err != nil {
					t.Fatal(err)
				}
				ext, _ := formats.Extents(f)
				for _, e := range ext {
					if e.Kind == formats.Data {
						continue
					}
					before := total()
					buf := make([]byte, min(e.Len, 8<<20))
					if _, err := f.ReadAt(buf, e.Off); err != nil && err != io.EOF {
						t.Fatal(err)
					}
					if !formats.IsZero(buf) {
						t.Errorf("%s: %s extent at %d reads non-zero", mf.Path, e.Kind, e.Off)
					}
					if d := total() - before; d != 0 {
						t.Errorf("%s: reading a %s extent at %d cost %d device reads", mf.Path, e.Kind, e.Off, d)
					}
					skipped++
				}
				if mf.Size > 64<<20 {
					continue
				}
				want := physicalRuns(t, f)
				before := total()
				buf := make([]byte, f.Size())
				if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				if d := total() - before; d != want {
					t.Errorf("%s: whole read cost %d device reads, want %d (physical runs)", mf.Path, d, want)
				}
				checked++
				reads += want
			}
		})
	}
}

// physicalRuns counts the runs of Data blocks contiguous on the volume and
// on one device, from the block map.
func physicalRuns(t *testing.T, f *File) int {
	ino := f.ino
	if ino.resident() {
		return 0
	}
	n := 0
	var prevEnd int64 = -1
	for blk := int64(0); blk < ino.nblocks; {
		r, err := ino.runAt(blk, 1<<62, 0)
		if err != nil {
			t.Fatal(err)
		}
		if r.kind == formats.Data {
			runEnd := min((r.blk+r.n)<<ino.shift, ino.size())
			length := runEnd - r.blk<<ino.shift
			if r.loc != prevEnd {
				n++
			}
			// Count device splits inside the run.
			for _, s := range ino.v.lv.segs {
				if s.lOff > r.loc && s.lOff < r.loc+length {
					n++
				}
			}
			prevEnd = r.loc + length
			if runEnd < (r.blk+r.n)<<ino.shift {
				prevEnd = -1
			}
		} else {
			prevEnd = -1
		}
		blk = r.blk + r.n
	}
	return n
}

func TestIOTestReader(t *testing.T) {
	for _, name := range []string{"sample5", "sample6", "spanned5"} {
		t.Run(name, func(t *testing.T) {
			b := buildVolume(t, name)
			v := openBuilt(t, b.images)
			for _, mf := range b.m.Files {
				if mf.Type == "dir" || mf.System || mf.Size > 256<<10 {
					continue
				}
				f, err := v.Open(mf.Path)
				if err != nil {
					t.Fatal(err)
				}
				content := readAll(t, f)
				if err := iotest.TestReader(io.NewSectionReader(f, 0, f.Size()), content); err != nil {
					t.Errorf("%s: %v", mf.Path, err)
				}
				// ReadAt past EOF and across it.
				if n, err := f.ReadAt(make([]byte, 10), f.Size()); n != 0 || err != io.EOF {
					t.Errorf("%s: ReadAt at EOF = %d, %v", mf.Path, n, err)
				}
				if f.Size() > 0 {
					buf := make([]byte, 20)
					n, err := f.ReadAt(buf, f.Size()-5)
					if n != 5 || err != io.EOF || !bytes.Equal(buf[:5], content[len(content)-5:]) {
						t.Errorf("%s: ReadAt across EOF = %d, %v", mf.Path, n, err)
					}
				}
			}
		})
	}
}

func TestConcurrentReads(t *testing.T) {
	b := buildVolume(t, "sample6")
	v, err := OpenFilesOptions(Options{CacheBytes: 256 << 10}, b.images...) // a small cache: evictions race with reads
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var files []*File
	var contents [][]byte
	for _, mf := range b.m.Files {
		if mf.Type != "file" || mf.System || mf.Size == 0 || mf.Size > 80<<20 {
			continue
		}
		f, err := v.Open(mf.Path)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		contents = append(contents, readAll(t, f))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seed := uint64(g*7919 + 1)
			for range 300 {
				seed = seed*6364136223846793005 + 1442695040888963407
				i := int(seed>>33) % len(files)
				f, c := files[i], contents[i]
				off := int64(seed>>20) % f.Size()
				n := min(int64(seed>>40)%(3<<20)+1, f.Size()-off)
				buf := make([]byte, n)
				if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
					t.Error(err)
					return
				}
				if !bytes.Equal(buf, c[off:off+n]) {
					t.Errorf("%s: concurrent read at %d differs", f.Stat().Path, off)
					return
				}
				if _, err := f.Extent(off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestErrors(t *testing.T) {
	b := buildVolume(t, "sample5")
	v := openBuilt(t, b.images)
	if _, err := v.Open("no/such/file"); !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := v.Open("files/blocks.bin/x"); !errors.Is(err, ErrNotDir) {
		t.Errorf("file as directory: %v", err)
	}
	if _, err := v.ReadDir("files/blocks.bin"); !errors.Is(err, ErrNotDir) {
		t.Errorf("ReadDir of a file: %v", err)
	}
	f, err := v.Open("/files/blocks.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 1), -1); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative offset: %v", err)
	}
	if _, err := f.Extent(f.Size()); !errors.Is(err, formats.ErrOutOfRange) {
		t.Errorf("Extent at size: %v", err)
	}
	f.Close()
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	// Different volumes together.
	b6 := buildVolume(t, "sample6")
	if _, err := OpenFiles(b.images[0], b6.images[0]); err == nil {
		t.Error("two volumes opened as one")
	}
	if _, err := OpenFiles(b.images[0], b.images[0]); !errors.Is(err, ErrInvalid) {
		t.Errorf("same device twice: %v", err)
	}
	// Not a volume.
	if _, err := Open(Device{Name: "zeros", R: bytes.NewReader(make([]byte, 4<<20)), Size: 4 << 20}); !errors.Is(err, ErrNotVMFS) {
		t.Errorf("zeros: %v", err)
	}
	// A truncated image.
	fh, err := os.Open(b.images[0])
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := Open(Device{Name: "truncated", R: fh, Size: 0x1100000 + 0x300000}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated: %v", err)
	} else {
		t.Logf("truncated image: %v", err)
	}
}

// TestBareLogicalVolume opens the logical volume of a single-extent image
// without its LVM header (the FS descriptor at 2 MiB of the device), as
// dissect.vmfs' bare-volume images are.
func TestBareLogicalVolume(t *testing.T) {
	for _, name := range []string{"sample5", "sample6", "sample3"} {
		t.Run(name, func(t *testing.T) {
			b := buildVolume(t, name)
			fh, err := os.Open(b.images[0])
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			st, _ := fh.Stat()
			const dataOffset = 0x1100000 // the first PE, as testimages lays it out
			v, err := Open(Device{Name: "bare", R: io.NewSectionReader(fh, dataOffset, st.Size()-dataOffset), Size: st.Size() - dataOffset})
			if err != nil {
				t.Fatal(err)
			}
			if info := v.Info(); info.LVMMajor != 0 || info.LVUUID != "" {
				t.Errorf("bare volume reports LVM %d, %q", info.LVMMajor, info.LVUUID)
			}
			m := *b.m
			m.Size = v.Info().Capacity // the device, not the LVM's logical size
			checkManifest(t, v, &m)
		})
	}
}
