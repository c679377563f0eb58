package vmdk

import (
	"bytes"
	"compress/bzip2"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

const platformDir = "/work/shared/testdata/platform-made"

// hostedRaw writes a raw source image with data, explicit zeros and holes.
func hostedRaw(t *testing.T, dir string, size int64, regs []region) string {
	p := filepath.Join(dir, "src.raw")
	writeSparse(t, p, size, regs)
	return p
}

func smallRegions() []region {
	return []region{
		{0, randBytes(1, 65536)},
		{1<<20 + 512, randBytes(2, 100000)},
		{3 << 20, make([]byte, 8192)},           // written zeros
		{3<<20 + 70000, randBytes(3, 1)},        // a lone byte
		{5<<20 + 3584 - 512, randBytes(4, 512)}, // the last sector
	}
}

// TestQemuHosted: VMDKs written by qemu-img in every hosted subformat read
// byte-identical to qemu-img's own reading of them.
func TestQemuHosted(t *testing.T) {
	oracle.Find(t, "qemu-img")
	const small = 5<<20 + 3584
	big := int64(2<<30 + 512<<20) // > 2 GiB: several twoGbMaxExtent* files
	bigRegs := []region{
		{4096, randBytes(5, 4096)},
		{2<<30 - 32768, randBytes(6, 65536)}, // across the 2 GiB extent boundary
		{big - 65536, randBytes(7, 65536)},
	}
	cases := []struct {
		sub  string
		size int64
		regs []region
	}{
		{"monolithicSparse", small, smallRegions()},
		{"monolithicFlat", small, smallRegions()},
		{"twoGbMaxExtentSparse", small, smallRegions()},
		{"twoGbMaxExtentFlat", small, smallRegions()},
		{"streamOptimized", small, smallRegions()},
		{"twoGbMaxExtentSparse", big, bigRegs},
		{"twoGbMaxExtentFlat", big, bigRegs},
		{"monolithicSparse", big, bigRegs},
		{"streamOptimized", big, bigRegs},
	}
	for _, c := range cases {
		name := c.sub
		if c.size == big {
			name += "-big"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			src := hostedRaw(t, dir, c.size, c.regs)
			img := filepath.Join(dir, "disk.vmdk")
			oracle.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+c.sub, src, img)
			d := openT(t, dir, "disk.vmdk", Options{})
			compareImage(t, d, qemuRaw(t, img, "vmdk"))
			if c.size == small {
				// Local files locate their bytes; compressed grains do not.
				compressed := func(int64) bool { return c.sub == "streamOptimized" }
				for _, n := range []int64{c.size, 4096, 70001} {
					synth.CheckLocate(t, d, n, compressed)
				}
			}
			if c.size == big && strings.HasPrefix(c.sub, "twoGb") && len(d.layers[0].exts) < 2 {
				t.Errorf("%d extents, want several", len(d.layers[0].exts))
			}
			alloc, err := formats.Allocated(d)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d extents, %d bytes Data of %d", c.sub, len(d.layers[0].exts), alloc, d.Size())
			if !strings.Contains(c.sub, "Flat") && alloc > 4<<20 && c.size == big {
				t.Errorf("sparse image reports %d bytes of Data", alloc)
			}
		})
	}
}

// TestQemuHostedChain: a monolithicSparse child created by qemu-img over a
// monolithicSparse base (embedded parentFileNameHint and parentCID), with
// writes through qemu-io, reads like qemu reads it; and CID tampering is
// caught.
func TestQemuHostedChain(t *testing.T) {
	oracle.Find(t, "qemu-img")
	oracle.Find(t, "qemu-io")
	dir := t.TempDir()
	src := hostedRaw(t, dir, 5<<20+3584, smallRegions())
	base := filepath.Join(dir, "base.vmdk")
	oracle.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "vmdk", src, base)
	child := filepath.Join(dir, "child.vmdk")
	oracle.Run(t, "qemu-img", "create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
	oracle.Run(t, "qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 1000k 200k", "-c", "write -z 0 4k", child)
	d := openT(t, dir, "child.vmdk", Options{})
	if got := d.Chain(); len(got) != 2 || got[1] != "base.vmdk" {
		t.Fatalf("chain %q", got)
	}
	compareImage(t, d, qemuRaw(t, child, "vmdk"))
	v, _ := d.View(1)
	compareImage(t, v, qemuRaw(t, base, "vmdk"))
}

func bunzip(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join(platformDir, name))
	if err != nil {
		t.Skipf("platform sample missing: %v", err)
	}
	defer f.Close()
	b, err := io.ReadAll(bzip2.NewReader(f))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPlatformStreamOptimized: VMware's own streamOptimized sample reads
// like qemu reads it; the fuzzed afl9 is refused with an error.
func TestPlatformStreamOptimized(t *testing.T) {
	b := bunzip(t, "iotest-version3.vmdk.bz2")
	d, err := Open(memFS{"v3.vmdk": b}, "v3.vmdk", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	l := d.Layers()[0]
	if l.CreateType != "streamOptimized" || d.Size() != 16<<30 {
		t.Errorf("createType %q size %d", l.CreateType, d.Size())
	}
	alloc, _ := formats.Allocated(d)
	t.Logf("iotest-version3: %d bytes Data, CID %08x", alloc, l.CID)
	if alloc == 0 || alloc > 151*65536 {
		t.Errorf("allocated %d, want 1..151 grains", alloc)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "v3.vmdk")
	writeFile(t, p, b)
	oracle.Find(t, "qemu-img")
	compareImage(t, d, qemuRaw(t, p, "vmdk"))
}

func TestPlatformAFL9Refused(t *testing.T) {
	b := bunzip(t, "afl9.vmdk.bz2")
	d, err := Open(memFS{"afl9.vmdk": b}, "afl9.vmdk", Options{})
	if err == nil {
		d.Close()
		t.Fatal("afl9 opened")
	}
	var e *Error
	if !errors.As(err, &e) || !(errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupported)) {
		t.Fatalf("error %v (%T) is not a corrupt/unsupported *Error", err, err)
	}
	t.Logf("afl9: %v", err)
	_ = bytes.MinRead
}
