package vhd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	tsynth "github.com/vmfs2vhd/vmfs2vhd/internal/synth"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

// writerOnly hides everything but Write: StreamLayout sees a pipe.
type writerOnly struct{ w io.Writer }

func (w writerOnly) Write(p []byte) (int, error) { return w.w.Write(p) }

// writeRaw writes the reference raw image of src to path, sparse, without
// using any planner.
func writeRaw(t *testing.T, path string, src *synth) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for _, e := range src.ext {
		if e.Kind != formats.Data {
			continue
		}
		for off := e.Off; off < e.End(); off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			src.ReadAt(buf[:n], off)
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Truncate(src.size); err != nil {
		t.Fatal(err)
	}
}

// cmpWriter is a stream sink that compares what is written with a file,
// so that a stream of a large sparse VHD needs no second file.
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
	if _, err := io.ReadFull(c.f, b); err != nil {
		return 0, fmt.Errorf("stream is longer than the file (%d bytes): %w", c.off, err)
	}
	if !bytes.Equal(b, p) {
		return 0, fmt.Errorf("stream differs from the file in [%d, +%d)", c.off, len(p))
	}
	c.off += int64(len(p))
	return len(p), nil
}

// streamEqualsFile streams l and checks that the stream is byte for byte
// the file at path.
func streamEqualsFile(t *testing.T, l formats.Layout, src formats.Image, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := &cmpWriter{f: f}
	if err := formats.StreamLayout(c, l, src, 1<<20); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Read(make([]byte, 1)); n != 0 {
		t.Fatalf("stream is shorter (%d bytes) than the file", c.off)
	}
}

// writeVHD plans src with opts and writes it to path with WriteLayout
// (seekable, sparse) and, unless stream is "", to stream with StreamLayout.
// It creates no file when Plan fails.
func writeVHD(t *testing.T, path, stream string, src *synth, opts Options) (*Layout, error) {
	t.Helper()
	l, err := Plan(src.size, src.ext, opts)
	if err != nil {
		return nil, err
	}
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
	if stream != "" {
		s, err := os.Create(stream)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := formats.StreamLayout(writerOnly{s}, l, src, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	return l, nil
}

func qemuSize(t *testing.T, path string) int64 {
	t.Helper()
	out := oracle.Run(t, "qemu-img", "info", "--output=json", "-f", "vpc", path)
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return info.VirtualSize
}

var vhdiMediaSize = regexp.MustCompile(`Media size\s*:.*\((\d+) bytes\)`)

func vhdiSize(t *testing.T, path string) int64 {
	t.Helper()
	out := oracle.Run(t, "vhdiinfo", path)
	m := vhdiMediaSize.FindSubmatch(out)
	if m == nil {
		t.Fatalf("vhdiinfo: no media size in\n%s", out)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// qemuCompare asks qemu-img whether the guest contents of a VHD and a raw
// image are identical.
func qemuCompare(t *testing.T, vhdPath, rawPath string) {
	t.Helper()
	out, stderr, err := oracle.RunErr(t, "qemu-img", "compare", "-f", "vpc", "-F", "raw", vhdPath, rawPath)
	if err != nil {
		t.Fatalf("qemu-img compare: %v\n%s%s", err, out, stderr)
	}
}

// qemuCheck runs qemu-img check; vpc does not support checks (exit 63),
// which is accepted.
func qemuCheck(t *testing.T, path string) {
	t.Helper()
	out, stderr, err := oracle.RunErr(t, "qemu-img", "check", "-f", "vpc", path)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 63 {
		return
	}
	if err != nil {
		t.Fatalf("qemu-img check: %v\n%s%s", err, out, stderr)
	}
}

// TestOracles writes VHDs of several sizes and allocation patterns, as
// files and as streams, and has qemu-img and libvhdi judge them.
func TestOracles(t *testing.T) {
	oracle.Find(t, "qemu-img")
	oracle.Find(t, "vhdiinfo")
	sizes := []struct {
		name    string
		size    int64
		maxData int64
	}{
		{"1MiB", 1 << 20, 64 << 20},
		{"1MiB+512", 1<<20 + 512, 64 << 20},
		{"100MiB+7s", 100<<20 + 7*512, 64 << 20},
		{"2GiB", 2 << 30, 256 << 20},
		{"2000GiB", 2000 << 30, 10 << 20},
	}
	if testing.Short() {
		sizes[3].maxData = 32 << 20
	}
	for _, sz := range sizes {
		t.Run(sz.name, func(t *testing.T) {
			for _, pat := range []string{"empty", "full", "alternating", "random"} {
				t.Run(pat, func(t *testing.T) {
					dir := t.TempDir()
					src := &synth{size: sz.size, ext: pattern(pat, sz.size, sz.maxData)}
					ref := filepath.Join(dir, "ref.raw")
					writeRaw(t, ref, src)
					for _, fixed := range []bool{false, true} {
						kind := map[bool]string{false: "dynamic", true: "fixed"}[fixed]
						t.Run(kind, func(t *testing.T) {
							checkOutput(t, dir, ref, src, Options{Fixed: fixed, UUID: testOpts.UUID, Time: testOpts.Time})
						})
					}
				})
			}
		})
	}
}

func checkOutput(t *testing.T, dir, ref string, src *synth, opts Options) {
	path := filepath.Join(dir, "out.vhd")
	l, err := writeVHD(t, path, "", src, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)

	if got := qemuSize(t, path); got != l.Size {
		t.Errorf("qemu-img virtual size %d, want %d", got, l.Size)
	}
	if got := vhdiSize(t, path); got != l.Size {
		t.Errorf("vhdiinfo media size %d, want %d", got, l.Size)
	}
	qemuCheck(t, path)
	qemuCompare(t, path, ref)
	// The stream equals the seekable file. Checked up to 512 MiB files:
	// bigger ones are mostly zeros (a fixed 2000 GiB stream is 2000 GiB of
	// them), and reading a file's holes back is slow on some hosts.
	if l.FileSize() <= 512<<20 {
		streamEqualsFile(t, l, src, path)
	}

	// Our reader agrees on size and, for small disks, on every byte.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := Open(f, l.FileSize())
	if err != nil {
		t.Fatal(err)
	}
	if img.Size() != l.Size {
		t.Errorf("Open: size %d, want %d", img.Size(), l.Size)
	}
	if src.size <= 128<<20 {
		checkContent(t, img, src)
	}

	// Size: a fixed VHD is the disk plus a footer; a dynamic one holds
	// the touched 2 MiB blocks plus 1% and fixed metadata. On disk, the
	// seekable file uses about the Data bytes (holes stay sparse).
	data := dataBytes(src.ext)
	meta := int64(batOff) + roundUp((l.Size+BlockSize-1)/BlockSize*4, SectorSize) + dataAlign + FooterSize
	if opts.Fixed {
		if l.FileSize() != l.Size+FooterSize {
			t.Errorf("fixed file size %d for %d", l.FileSize(), l.Size)
		}
	} else if max := int64(l.Blocks)*BlockSize*101/100 + meta; l.FileSize() > max {
		t.Errorf("dynamic file size %d > %d (%d blocks)", l.FileSize(), max, l.Blocks)
	}
	runs := 0
	for _, e := range src.ext {
		if e.Kind == formats.Data {
			runs++
		}
	}
	if du, max := tsynth.DiskUsage(t, path), data*101/100+int64(2*runs+l.Blocks+4)*4096+meta; du > max {
		t.Errorf("disk usage %d > %d (data %d)", du, max, data)
	}
	t.Logf("size %d data %d file %d disk usage %d blocks %d", l.Size, data, l.FileSize(), tsynth.DiskUsage(t, path), l.Blocks)
}

// TestOraclesAzure checks the Azure rounding with qemu-img and libvhdi.
func TestOraclesAzure(t *testing.T) {
	for _, size := range []int64{1<<20 + 512, 100<<20 + 7*512} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			dir := t.TempDir()
			src := &synth{size: size, ext: pattern("random", size, 64<<20)}
			ref := filepath.Join(dir, "ref.raw")
			writeRaw(t, ref, src)
			path := filepath.Join(dir, "azure.vhd")
			l, err := writeVHD(t, path, filepath.Join(dir, "stream.vhd"), src, Options{Azure: true, UUID: testOpts.UUID, Time: testOpts.Time})
			if err != nil {
				t.Fatal(err)
			}
			if l.Size%(1<<20) != 0 || l.Size < AzureMinSize || l.Size < size || len(l.Notes) != 1 {
				t.Errorf("Azure size %d, notes %q", l.Size, l.Notes)
			}
			t.Log(l.Notes)
			if got := qemuSize(t, path); got != l.Size {
				t.Errorf("qemu-img virtual size %d, want %d", got, l.Size)
			}
			if got := vhdiSize(t, path); got != l.Size {
				t.Errorf("vhdiinfo media size %d, want %d", got, l.Size)
			}
			// The larger VHD compares equal to the raw image: qemu-img
			// accepts a size difference whose excess reads as zeros.
			qemuCompare(t, path, ref)
			tsynth.SameFiles(t, path, filepath.Join(dir, "stream.vhd"))
		})
	}
}

// TestOraclesLimit checks that 2040 GiB is accepted by qemu-img and libvhdi
// and that 2 TiB + 1 MiB is refused before any file exists.
func TestOraclesLimit(t *testing.T) {
	dir := t.TempDir()
	t.Run("2TiB+1MiB refused", func(t *testing.T) {
		for _, fixed := range []bool{false, true} {
			const size = 2<<40 + 1<<20
			src := &synth{size: size, ext: pattern("alternating", size, 10<<20)}
			path := filepath.Join(dir, "big.vhd")
			_, err := writeVHD(t, path, filepath.Join(dir, "big-stream.vhd"), src, Options{Fixed: fixed})
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("fixed=%v: err = %v, want ErrTooLarge", fixed, err)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("output exists after refusal: %v", err)
			}
			t.Log(err)
		}
	})
	t.Run("2040GiB accepted", func(t *testing.T) {
		src := &synth{size: MaxSize, ext: pattern("full", MaxSize, 4<<20)}
		ref := filepath.Join(dir, "max.raw")
		writeRaw(t, ref, src)
		checkOutput(t, dir, ref, src, testOpts)
	})
}

// TestOraclesMount reads our VHDs through libvhdi's FUSE driver.
func TestOraclesMount(t *testing.T) {
	oracle.Find(t, "vhdimount")
	umount := oracle.Find(t, "fusermount")
	if testing.Short() {
		t.Skip("short")
	}
	const size = 100<<20 + 7*512
	for _, fixed := range []bool{false, true} {
		t.Run(map[bool]string{false: "dynamic", true: "fixed"}[fixed], func(t *testing.T) {
			dir := t.TempDir()
			src := &synth{size: size, ext: pattern("random", size, 64<<20)}
			path := filepath.Join(dir, "m.vhd")
			if _, err := writeVHD(t, path, "", src, Options{Fixed: fixed, UUID: testOpts.UUID, Time: testOpts.Time}); err != nil {
				t.Fatal(err)
			}
			mnt := filepath.Join(dir, "mnt")
			os.Mkdir(mnt, 0o755)
			if _, stderr, err := oracle.RunErr(t, "vhdimount", path, mnt); err != nil {
				t.Skipf("vhdimount (FUSE) does not work here: %v %s", err, stderr)
			}
			defer exec.Command(umount, "-u", mnt).Run()
			f, err := os.Open(filepath.Join(mnt, "vhdi1"))
			if err != nil {
				t.Skipf("vhdimount: %v", err)
			}
			defer f.Close()
			fi, _ := f.Stat()
			checkContent(t, &fileImage{f, fi.Size()}, src)
		})
	}
}

type fileImage struct {
	*os.File
	size int64
}

func (f *fileImage) Size() int64 { return f.size }
func (f *fileImage) Extent(off int64) (formats.Extent, error) {
	return formats.Extent{Off: off, Len: f.size - off, Kind: formats.Data}, nil
}
