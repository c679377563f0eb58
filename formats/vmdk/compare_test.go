package vmdk

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

// qemuRaw converts img (format fmt) to a raw file with qemu-img and returns
// its path.
func qemuRaw(t *testing.T, img, fmt string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu.raw")
	oracle.Run(t, "qemu-img", "convert", "-f", fmt, "-O", "raw", img, out)
	return out
}

// interval helpers
type span struct{ off, end int64 }

func union(a []span) []span {
	if len(a) == 0 {
		return nil
	}
	// insertion sort is fine for the sizes here
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j].off < a[j-1].off; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
	out := []span{a[0]}
	for _, s := range a[1:] {
		last := &out[len(out)-1]
		if s.off <= last.end {
			last.end = max(last.end, s.end)
		} else {
			out = append(out, s)
		}
	}
	return out
}

// compareImage checks that got reads exactly like the raw file refPath and
// that got's Data extents cover every non-zero byte of the reference.
// Images up to 256 MiB are compared in full; larger ones over the union of
// both sides' allocated ranges (the rest is a hole in the reference and not
// Data in got, so both read zero — which is also probed).
func compareImage(t *testing.T, got formats.Image, refPath string) {
	t.Helper()
	ref, err := DirFS(filepath.Dir(refPath)).Open(filepath.Base(refPath))
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if got.Size() != ref.Size() {
		t.Fatalf("size %d, reference %d", got.Size(), ref.Size())
	}
	exts, err := formats.Extents(got)
	if err != nil {
		t.Fatalf("extents: %v", err)
	}
	refExts, err := formats.Extents(ref)
	if err != nil {
		t.Fatal(err)
	}
	var all []span
	var nonData []span
	for _, e := range exts {
		if e.Kind == formats.Data {
			all = append(all, span{e.Off, e.End()})
		} else {
			nonData = append(nonData, span{e.Off, e.End()})
		}
	}
	for _, e := range refExts {
		if e.Kind == formats.Data {
			all = append(all, span{e.Off, e.End()})
		}
	}
	if got.Size() <= 256<<20 {
		all = []span{{0, got.Size()}}
	} else {
		// probe some of the rest
		for _, o := range []int64{0, got.Size() / 3, got.Size() / 2, got.Size() - 1<<20} {
			all = append(all, span{o, min(o+1<<20, got.Size())})
		}
	}
	const chunk = 4 << 20
	a, b := make([]byte, chunk), make([]byte, chunk)
	for _, s := range union(all) {
		for off := s.off; off < s.end; off += chunk {
			n := min(chunk, s.end-off)
			if _, err := got.ReadAt(a[:n], off); err != nil && err != io.EOF {
				t.Fatalf("read at %d: %v", off, err)
			}
			if _, err := ref.ReadAt(b[:n], off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(a[:n], b[:n]) {
				i := firstDiff(a[:n], b[:n])
				t.Fatalf("byte %d (%#x) differs: got %#02x, qemu %#02x", off+int64(i), off+int64(i), a[i], b[i])
			}
		}
	}
	// Non-zero reference bytes must lie in Data extents.
	for _, s := range nonData {
		for off := s.off; off < s.end; {
			re, err := ref.Extent(off)
			if err != nil {
				t.Fatal(err)
			}
			end := min(re.End(), s.end)
			if re.Kind == formats.Data {
				for o := off; o < end; o += chunk {
					n := min(chunk, end-o)
					ref.ReadAt(b[:n], o)
					if !allZero(b[:n]) {
						t.Fatalf("non-zero reference bytes in [%d,+%d), which is not Data in our extent map", o, n)
					}
				}
			}
			off = end
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// openT opens name in dir or fails t.
func openT(t *testing.T, dir, name string, opts Options) *Disk {
	t.Helper()
	d, err := Open(DirFS(dir), name, opts)
	if err != nil {
		t.Fatalf("Open %s: %v", name, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}
