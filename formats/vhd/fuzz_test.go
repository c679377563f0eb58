package vhd

import (
	"bytes"
	"errors"
	synthpkg "github.com/vmfs2vhd/vmfs2vhd/internal/synth"
	"io"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// FuzzOpen opens arbitrary bytes as a VHD and reads everything the reader
// reports as data. Seeds: the platform-made samples and small VHDs planned
// by this package.
func FuzzOpen(f *testing.F) {
	for _, name := range []string{"hyperv2012r2-dynamic.vhd", "virtualpc-dynamic.vhd", "afl5.img"} {
		f.Add(sample(f, name))
	}
	d2v := sample(f, "d2v-zerofilled.vhd") // 251 MiB: seed its metadata only
	f.Add(append(bytes.Clone(d2v[:8192]), d2v[len(d2v)-FooterSize:]...))
	alt := pattern("alternating", 1<<20, 64<<20)
	f.Add(planBytes(f, 1<<20, []formats.Extent{{Off: 0, Len: 1 << 20, Kind: formats.Hole}}, testOpts))
	f.Add(planBytes(f, 1<<20, alt, testOpts))
	f.Add(planBytes(f, 64<<10+512, pattern("random", 64<<10+512, 1<<20), Options{Fixed: true, UUID: testOpts.UUID, Time: testOpts.Time}))

	f.Fuzz(func(t *testing.T, b []byte) {
		// The in-place updater and the fingerprint parse the metadata too.
		synthpkg.FuzzUpdate(b, Open, PlanUpdate, Fingerprint)
		img, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not a *vhd.Error", err)
			}
			return
		}
		budget := int64(8 << 20)
		buf := make([]byte, 1<<20)
		err = formats.Walk(img, 0, img.Size(), func(e formats.Extent) error {
			for off := e.Off; off < e.End() && budget > 0; off += int64(len(buf)) {
				n := min(int64(len(buf)), e.End()-off)
				k, err := img.ReadAt(buf[:n], off)
				if err != nil && !(err == io.EOF && int64(k) == n) {
					return err
				}
				if e.Kind != formats.Data && !formats.IsZero(buf[:k]) {
					t.Fatalf("%v reads non-zero bytes", e)
				}
				budget -= n
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
