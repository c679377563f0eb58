package vmfs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device/devicetest"
)

func shaReader(r io.ReaderAt, size int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// The whole reader over fake raw devices that fail every read not aligned
// to their sector size in offset, length and buffer address (what Windows
// \\.\PhysicalDriveN and macOS /dev/rdiskN do), through the aligned layer:
// open, walk, list every directory, read every file and a snapshot chain
// through formats/vmdk, for 512- and 4096-byte sectors. Without the layer
// the same devices fail.
func TestAlignedRawDevices(t *testing.T) {
	for _, tc := range []struct {
		name  string // of volumeSpecs
		chain string // a leaf whose chain is read through formats/vmdk
	}{
		{"sample3", "vm4/vm4-000003.vmdk"},
		{"sample5", "vm4/vm4-000003.vmdk"},
		{"sample6", "vm4/vm4-000003.vmdk"},
		{"spanned5", "vm1/vm1-000002.vmdk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := buildVolume(t, tc.name)
			m, paths := b.m, b.images
			for _, ss := range []int64{512, 4096} {
				t.Run(fmt.Sprint(ss), func(t *testing.T) {
					var stricts []*devicetest.Strict
					var devs, bare []Device
					for _, p := range paths {
						f, err := os.Open(p)
						if err != nil {
							t.Fatal(err)
						}
						t.Cleanup(func() { f.Close() })
						st, _ := f.Stat()
						s := &devicetest.Strict{R: f, Sector: ss}
						stricts = append(stricts, s)
						a, err := device.NewAligned(s, st.Size(), int(ss), device.DefaultCacheBytes)
						if err != nil {
							t.Fatal(err)
						}
						devs = append(devs, Device{Name: p, R: a, Size: st.Size()})
						bare = append(bare, Device{Name: p, R: s, Size: st.Size()})
					}
					// The fake device is strict: the reader alone fails on it.
					if _, err := Open(bare...); !errors.Is(err, devicetest.ErrUnaligned) {
						t.Fatalf("open without the aligned layer: %v, want ErrUnaligned", err)
					}
					for _, s := range stricts {
						s.Bad.Store(0)
						s.Reads.Store(0)
					}
					v, err := Open(devs...)
					if err != nil {
						t.Fatal(err)
					}
					checkVolume(t, v, m, tc.chain)
					var reads int64
					for _, s := range stricts {
						if n := s.Bad.Load(); n != 0 {
							t.Errorf("%d unaligned reads reached the device", n)
						}
						reads += s.Reads.Load()
					}
					if reads == 0 {
						t.Error("no reads reached the devices")
					}
				})
			}
		})
	}
}

// checkVolume walks v, lists every directory, reads every file and the
// chain ending at leaf, and compares with the manifest.
func checkVolume(t *testing.T, v *Volume, m *testimages.Manifest, leaf string) {
	t.Helper()
	if info := v.Info(); info.Label != m.Label || info.UUID != m.UUID || info.Version != m.VMFS {
		t.Errorf("info: VMFS%d %q %s, manifest VMFS%d %q %s", info.Version, info.Label, info.UUID, m.VMFS, m.Label, m.UUID)
	}
	want := map[string]testimages.ManifestFile{}
	for _, f := range m.Files {
		want[f.Path] = f
	}
	seen := 0
	err := v.Walk(".", func(p string, info FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.IsDir {
			if _, err := v.ReadDir(p); err != nil {
				return err
			}
		}
		wf, ok := want[p]
		if !ok || wf.System {
			if info.Type == TypeSystem && info.IsDir {
				return fs.SkipDir
			}
			return nil
		}
		seen++
		switch wf.Type {
		case "file":
			f, err := v.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			got, err := shaReader(f, f.Size())
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if f.Size() != wf.Size || got != wf.SHA256 {
				t.Errorf("%s: size %d sha256 %s, manifest %d %s", p, f.Size(), got, wf.Size, wf.SHA256)
			}
		case "symlink":
			if target, err := v.Readlink(p); err != nil || target != wf.Target {
				t.Errorf("%s: readlink %q, %v; manifest %q", p, target, err, wf.Target)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	nonSystem := 0
	for _, f := range m.Files {
		if !f.System {
			nonSystem++
		}
	}
	if seen != nonSystem {
		t.Errorf("walk saw %d of the manifest's %d files", seen, nonSystem)
	}
	fsys := vmdk.FSFunc(func(name string) (vmdk.File, error) { return v.Open(name) })
	for _, d := range m.Disks {
		if d.Path != leaf {
			continue
		}
		disk, err := vmdk.Open(fsys, d.Path, vmdk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer disk.Close()
		got, err := shaReader(disk, disk.Size())
		if err != nil {
			t.Fatal(err)
		}
		if got != d.SHA256 || len(d.Chain) < 2 || !strings.HasSuffix(d.Chain[len(d.Chain)-1], ".vmdk") {
			t.Errorf("%s (chain %v): sha256 %s, manifest %s", d.Path, d.Chain, got, d.SHA256)
		}
		return
	}
	t.Errorf("manifest has no disk %s", leaf)
}
