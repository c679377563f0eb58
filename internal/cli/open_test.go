package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/qcow2"
	"github.com/vmfs2vhd/vmfs2vhd/formats/raw"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhd"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhdx"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device/devicetest"
)

// smallSpec is a small volume for device tests: a thin disk with a
// snapshot, a file.
func smallSpec(ver int, label string, seed int64) testimages.Spec {
	return testimages.Spec{
		VMFS: ver, Seed: seed, Label: label,
		Disks:     []testimages.DiskSpec{{Path: "vm/vm.vmdk", Type: testimages.Thin, Size: 8 << 20, Fill: 40}},
		Snapshots: []testimages.SnapshotSpec{{Base: "vm/vm.vmdk", Fill: 10}},
		Files:     []testimages.FileSpec{{Path: "f/a.bin", Size: 70000}, {Path: "f/b.bin", Size: 3 << 20}},
	}
}

// buildImages builds spec into dir and returns its image files in extent
// order.
func buildImages(t *testing.T, spec testimages.Spec) (*testimages.Manifest, []string) {
	t.Helper()
	dir := t.TempDir()
	m, err := testimages.Build(spec, filepath.Join(dir, "ds.img"))
	if err != nil {
		t.Fatal(err)
	}
	var imgs []string
	for _, p := range m.Images {
		imgs = append(imgs, filepath.Join(dir, p))
	}
	return m, imgs
}

// loopAll attaches every image to a read-only loop device.
func loopAll(t *testing.T, imgs []string, sector int) []string {
	t.Helper()
	var devs []string
	for _, p := range imgs {
		devs = append(devs, devicetest.Loop(t, p, sector))
	}
	return devs
}

// volArgs is VOLUME with -e for the other extents, as flags before it.
func volArgs(paths []string) (flags []string, volume string) {
	for _, p := range paths[1:] {
		flags = append(flags, "-e", p)
	}
	return flags, paths[0]
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, stderr := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// sameOutput checks that two conversions of one disk are the same file.
// raw and qcow2 outputs are deterministic: byte-identical. VHD and VHDX
// carry a fresh disk id (and VHD a timestamp) in every output: they must
// have the same size, differ only in their metadata (VHD: the footer and
// its copy; VHDX: headers and metadata region, in the first 4 MiB), and
// read back as the same disk.
func sameOutput(t *testing.T, format, a, b string) {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(da) != len(db) {
		t.Errorf("%s: %s is %d bytes, %s %d", format, a, len(da), b, len(db))
		return
	}
	if format == "raw" || format == "qcow2" {
		if !bytes.Equal(da, db) {
			t.Errorf("%s: %s and %s differ", format, a, b)
		}
		return
	}
	n := len(da)
	for i := range da {
		if da[i] == db[i] {
			continue
		}
		ok := (format == "vhd" && (i < 512 || i >= n-512)) || (format == "vhdx" && i < 4<<20)
		if !ok {
			t.Errorf("%s: %s and %s differ at byte %d, outside the metadata", format, a, b, i)
			return
		}
	}
	if ca, cb := contentSHA(t, format, da), contentSHA(t, format, db); ca != cb {
		t.Errorf("%s: %s and %s hold different disks", format, a, b)
	}
}

func contentSHA(t *testing.T, format string, data []byte) string {
	t.Helper()
	r := bytes.NewReader(data)
	var img formats.Image
	var err error
	switch format {
	case "vhd":
		img, err = vhd.Open(r, int64(len(data)))
	case "vhdx":
		img, err = vhdx.Open(r, int64(len(data)))
	case "qcow2":
		img, err = qcow2.Open(r, int64(len(data)))
	default:
		img, err = raw.Open(r, int64(len(data)))
	}
	if err != nil {
		t.Fatalf("%s: %v", format, err)
	}
	h := sha256.New()
	io.Copy(h, io.NewSectionReader(img, 0, img.Size()))
	return hex.EncodeToString(h.Sum(nil))
}

// The same commands on loop devices (read-only, 512- or 4096-byte sectors,
// cached and with --direct) and on the image files behind them give the
// same output: ls -R, cat, disks, convert to every format. VMFS3/5/6, one
// LUN, MBR and GPT partitioned, and a volume spanned over three devices.
func TestLoopDevicesMatchImages(t *testing.T) {
	if why := devicetest.LoopAvailable(); why != "" && !devicetest.RequireOracles() {
		t.Skipf("skipping: loop devices: %s", why)
	}
	cases := []struct {
		name   string
		spec   testimages.Spec
		sector int
	}{
		{"vmfs3", smallSpec(3, "loop3", 301), 512},
		{"vmfs5-mbr", func() testimages.Spec { s := smallSpec(5, "loop5", 501); s.Partition = "mbr"; return s }(), 512},
		{"vmfs6-gpt-4k", func() testimages.Spec { s := smallSpec(6, "loop6", 601); s.Partition = "gpt"; return s }(), 4096},
		{"vmfs6-span3", func() testimages.Spec { s := smallSpec(6, "span", 603); s.Extents = 3; return s }(), 4096},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, imgs := buildImages(t, tc.spec)
			devs := loopAll(t, imgs, tc.sector)
			leaf := "vm/vm-000001.vmdk"
			var flat string
			for _, d := range m.Disks {
				if d.Path == leaf {
					flat = d.Chain[len(d.Chain)-1]
				}
			}
			flat = strings.TrimSuffix(flat, ".vmdk") + "-flat.vmdk"
			out := t.TempDir()
			// run runs every command on paths and returns what to compare.
			run := func(tag string, paths []string, extra ...string) map[string]string {
				flags, vol := volArgs(paths)
				flags = append(flags, extra...)
				res := map[string]string{}
				res["ls"] = mustRun(t, append(append([]string{"ls", "-l", "-R"}, flags...), vol)...)
				res["disks"] = mustRun(t, append(append([]string{"disks", "--json"}, flags...), vol)...)
				res["info"] = mustRun(t, append(append([]string{"info", "--json"}, flags...), vol, "f/b.bin")...)
				cat := mustRun(t, append(append([]string{"cat"}, flags...), vol, flat)...)
				res["cat"] = fmt.Sprintf("%x", sha256.Sum256([]byte(cat)))
				for _, f := range []string{"raw", "vhd", "vhdx", "qcow2"} {
					o := filepath.Join(out, tag+"."+f)
					mustRun(t, append(append([]string{"convert", "-q", "-f", f}, flags...), vol, leaf, o)...)
					res["convert-"+f] = o
				}
				return res
			}
			want := run("image", imgs)
			if len(strings.TrimSpace(want["ls"])) == 0 || len(want["cat"]) == 0 {
				t.Fatal("image files: empty output")
			}
			for _, direct := range []bool{false, true} {
				tag, extra := "loop", []string(nil)
				if direct {
					tag, extra = "direct", []string{"--direct"}
				}
				got := run(tag, devs, extra...)
				for k, w := range want {
					if strings.HasPrefix(k, "convert-") {
						sameOutput(t, strings.TrimPrefix(k, "convert-"), w, got[k])
						continue
					}
					if got[k] != w {
						t.Errorf("%s %s: output differs from the image files'\n got: %.300s\nwant: %.300s", tag, k, got[k], w)
					}
				}
			}
			if got := fileSHA(t, want["convert-raw"]); got != manifestSHA(m, leaf) {
				t.Errorf("raw output sha256 %s, manifest %s", got, manifestSHA(m, leaf))
			}
		})
	}
}

func manifestSHA(m *testimages.Manifest, disk string) string {
	for _, d := range m.Disks {
		if d.Path == disk {
			return d.SHA256
		}
	}
	return ""
}
