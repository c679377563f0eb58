package vmfs

import (
	"errors"
	"io"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

// TestLocate checks File.Locate against ReadAt for every file of every
// layout: located bytes read from the device exactly as through the file,
// every data block is located (but resident data), holes and TBZ blocks are
// not, and a located run never crosses a device of a spanned volume.
func TestLocate(t *testing.T) {
	for name := range volumeSpecs() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := buildVolume(t, name)
			v := openBuilt(t, b.images)
			devs := map[io.ReaderAt]bool{}
			for _, mf := range b.m.Files {
				if mf.Type != "file" || mf.Size == 0 {
					continue
				}
				f, err := v.Open(mf.Path)
				if err != nil {
					t.Fatal(err)
				}
				resident := f.Stat().Layout() == "resident"
				ns := []int64{f.Size(), 1 << 20}
				if f.Size() <= 8<<20 {
					ns = append(ns, 65537, 4096) // small requests: every block edge
				}
				for _, n := range ns {
					got := synth.CheckLocate(t, f, n, func(int64) bool { return resident })
					if want := mf.Allocated; !resident && got != want {
						t.Errorf("%s: %d bytes located in requests of %d, %d allocated", mf.Path, got, n, want)
					}
				}
				for off := int64(0); off < f.Size(); {
					loc, err := f.Locate(off, f.Size()-off)
					if err != nil {
						t.Fatal(err)
					}
					if loc.R != nil {
						devs[loc.R] = true
					}
					off += loc.Len
				}
				f.Close()
			}
			if len(b.images) > 1 && len(devs) < 2 {
				t.Errorf("a volume spanning %d devices has data located on %d of them", len(b.images), len(devs))
			}
		})
	}
}

func TestLocateErrors(t *testing.T) {
	b := buildVolume(t, "sample5")
	v := openBuilt(t, b.images)
	var path string
	for _, mf := range b.m.Files {
		if mf.Type == "file" && mf.Size > 0 {
			path = mf.Path
			break
		}
	}
	f, err := v.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{-1, 1}, {0, 0}, {f.Size(), 1}, {0, -5}} {
		if _, err := f.Locate(c.off, c.n); !errors.Is(err, formats.ErrOutOfRange) {
			t.Errorf("Locate(%d, %d) = %v, want ErrOutOfRange", c.off, c.n, err)
		}
	}
	f.Close()
	if _, err := f.Locate(0, 1); err == nil {
		t.Error("Locate on a closed file succeeded")
	}
}

// TestLocateChains: every disk of the sample volumes — thin, lazy (TBZ
// blocks must not be located: they hold stale bytes), eager, COWD and
// seSparse deltas — opened through formats/vmdk locates its data on the
// volume's devices, reading as the disk reads.
func TestLocateChains(t *testing.T) {
	for _, name := range []string{"sample3", "sample5", "sample6", "spanned5"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := buildVolume(t, name)
			v := openBuilt(t, b.images)
			fsys := vmdk.FSFunc(func(p string) (vmdk.File, error) {
				f, err := v.Open(p)
				if err != nil {
					return nil, err
				}
				return f, nil
			})
			for _, md := range b.m.Disks {
				if md.SHA256 == "" {
					continue // RDM: no data on the volume
				}
				d, err := vmdk.Open(fsys, md.Path, vmdk.Options{})
				if err != nil {
					t.Fatal(err)
				}
				located := synth.CheckLocate(t, d, 1<<20, nil)
				if located == 0 && md.Allocated > 0 {
					t.Errorf("%s: nothing located of %d allocated bytes", md.Path, md.Allocated)
				}
				if d.Size() <= 64<<20 {
					synth.CheckLocate(t, d, 4096, nil)
				}
				d.Close()
			}
		})
	}
}
