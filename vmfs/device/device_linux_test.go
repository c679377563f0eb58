//go:build linux

package device_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device/devicetest"
)

func writeRandom(t *testing.T, dir string, size int) (string, []byte) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	p := filepath.Join(dir, "img")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

// checkReads reads d at unaligned offsets and lengths and compares.
func checkReads(t *testing.T, d *device.Device, data []byte) {
	t.Helper()
	for _, c := range []struct{ off, n int }{{0, 4}, {513, 1000}, {4095, 70000}, {1 << 20, 1 << 20}, {len(data) - 10, 10}, {12345, 2<<20 + 7}} {
		if c.off+c.n > len(data) {
			continue
		}
		p := make([]byte, c.n+1)[1:] // an unaligned buffer
		if _, err := d.ReadAt(p, int64(c.off)); err != nil {
			t.Fatalf("%s: %d bytes at %d: %v", d.Name(), c.n, c.off, err)
		}
		if !bytes.Equal(p, data[c.off:c.off+c.n]) {
			t.Fatalf("%s: %d bytes at %d: wrong data", d.Name(), c.n, c.off)
		}
	}
	if n, err := d.ReadAt(make([]byte, 10), int64(len(data)-5)); n != 5 || err != io.EOF {
		t.Errorf("%s: read across the end: %d, %v", d.Name(), n, err)
	}
}

// A loop device is sized by BLKGETSIZE64 and its sector size comes from
// BLKSSZGET; reads of any shape work, cached and with O_DIRECT (which
// rejects unaligned reads: this proves the aligned layer on Linux).
func TestLoopDevice(t *testing.T) {
	img, data := writeRandom(t, t.TempDir(), 8<<20)
	for _, ss := range []int{512, 4096} {
		dev := devicetest.Loop(t, img, ss)
		for _, direct := range []bool{false, true} {
			d, err := device.Open(dev, device.Options{Direct: direct})
			if err != nil {
				t.Fatal(err)
			}
			if !d.Raw() || d.Size() != int64(len(data)) || d.SectorSize() != ss || !d.Aligned() || d.Direct() != direct {
				t.Errorf("%s (sector %d, direct %v): raw %v size %d sector %d aligned %v direct %v", dev, ss, direct,
					d.Raw(), d.Size(), d.SectorSize(), d.Aligned(), d.Direct())
			}
			checkReads(t, d, data)
			d.Close()
		}
	}
}

// Image files: sized by stat, read as they are; with Direct, through the
// aligned layer on a file system that has O_DIRECT, and silently cached on
// one that refuses it (tmpfs before Linux 6.6).
func TestImageFile(t *testing.T) {
	img, data := writeRandom(t, t.TempDir(), 3<<20+512)
	d, err := device.Open(img, device.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Raw() || d.Aligned() || d.Direct() || d.Size() != int64(len(data)) {
		t.Errorf("image file: raw %v aligned %v direct %v size %d", d.Raw(), d.Aligned(), d.Direct(), d.Size())
	}
	checkReads(t, d, data)
	// Its bytes may be read from the file itself (sendfile).
	if rc, err := d.SyscallConn(); err != nil || rc == nil {
		t.Errorf("SyscallConn of an image file: %v", err)
	}
	d.Close()

	d, err = device.Open(img, device.Options{Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	if d.Direct() {
		if !d.Aligned() {
			t.Error("O_DIRECT file without the aligned layer")
		}
		if _, err := d.SyscallConn(); !errors.Is(err, device.ErrWrapped) {
			t.Errorf("SyscallConn with O_DIRECT: %v, want ErrWrapped", err)
		}
	} else {
		t.Logf("%s: the file system refuses O_DIRECT", img)
	}
	checkReads(t, d, data)
	d.Close()

	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "devtest")
		if err != nil {
			t.Skip(err)
		}
		defer os.RemoveAll(dir)
		img, data := writeRandom(t, dir, 1<<20)
		d, err := device.Open(img, device.Options{Direct: true})
		if err != nil {
			t.Fatalf("tmpfs with Direct: %v", err)
		}
		// tmpfs has O_DIRECT since Linux 6.6; before, Open falls back to
		// cached reads. Either way the reads must work.
		t.Logf("tmpfs: direct %v", d.Direct())
		checkReads(t, d, data)
		d.Close()
	}
}

func TestOpenMissing(t *testing.T) {
	if _, err := device.Open(filepath.Join(t.TempDir(), "nope"), device.Options{}); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}
