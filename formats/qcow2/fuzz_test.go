package qcow2

import (
	"bytes"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

func FuzzOpen(f *testing.F) {
	// Our own outputs, with 512-byte clusters so the seeds stay small.
	for _, c := range []struct {
		size int64
		ext  []formats.Extent
		opts Options
	}{
		{sMiB, nil, Options{ClusterSize: 512}},
		{sMiB, []formats.Extent{{Off: 512, Len: 2048, Kind: formats.Data}, {Off: 4096, Len: 8192, Kind: formats.Zero}}, Options{ClusterSize: 512}},
		{sMiB, []formats.Extent{{Off: 512, Len: 2048, Kind: formats.Data}, {Off: 4096, Len: 8192, Kind: formats.Zero}}, Options{ClusterSize: 512, Compat: CompatV2}},
		{64 * sMiB, []formats.Extent{{Off: 32 * sMiB, Len: 1024, Kind: formats.Data}}, Options{ClusterSize: 1024}},
	} {
		l, err := Plan(c.size, c.ext, c.opts)
		if err != nil {
			f.Fatal(err)
		}
		var w bytes.Buffer
		if err := formats.StreamLayout(&w, l, synth.New(c.size, c.ext, 1), 1<<16); err != nil {
			f.Fatal(err)
		}
		f.Add(w.Bytes())
	}
	// And small images qemu-img wrote, when it is installed (compressed
	// clusters, a backing file).
	if qemu, err := exec.LookPath("qemu-img"); err == nil {
		dir := f.TempDir()
		raw := filepath.Join(dir, "src.raw")
		if err := os.WriteFile(raw, bytes.Repeat([]byte("vmfs2vhd"), 8192), 0o644); err == nil {
			for i, args := range [][]string{
				{"convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512", "-c", raw},
				{"create", "-f", "qcow2", "-o", "cluster_size=512", "-F", "raw", "-b", raw},
			} {
				out := filepath.Join(dir, string(rune('a'+i))+".qcow2")
				if exec.Command(qemu, append(args, out)...).Run() == nil {
					if b, err := os.ReadFile(out); err == nil {
						f.Add(b)
					}
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// The in-place updater and the fingerprint parse the metadata too.
		synth.FuzzUpdate(b, Open, PlanUpdate, Fingerprint)
		img, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		var pos int64
		for i := 0; i < 1000 && pos < img.Size(); i++ {
			e, err := img.Extent(pos)
			if err != nil {
				return
			}
			if e.Off != pos || e.Len <= 0 || e.End() > img.Size() {
				t.Fatalf("Extent(%d) = %+v", pos, e)
			}
			pos = e.End()
		}
		buf := make([]byte, 64<<10)
		img.ReadAt(buf, 0)
		img.ReadAt(buf, max(0, img.Size()-int64(len(buf))+512))
	})
}
