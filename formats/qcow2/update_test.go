package qcow2

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

// writeImage writes our conversion of a size-byte disk with data where ext
// says to a sparse file and returns it, opened.
func writeImage(t *testing.T, size int64, ext []formats.Extent, opts Options) *os.File {
	t.Helper()
	l, err := Plan(size, ext, opts)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "img.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := formats.WriteLayout(f, l, synth.New(size, ext, 3), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(l.FileSize()); err != nil {
		t.Fatal(err)
	}
	return f
}

func fileSize(t *testing.T, f *os.File) int64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// readLog is an io.ReaderAt that records the reads made of it.
type readLog struct {
	r     io.ReaderAt
	mu    sync.Mutex
	reads [][2]int64 // offset, length
}

func (l *readLog) ReadAt(p []byte, off int64) (int, error) {
	l.mu.Lock()
	l.reads = append(l.reads, [2]int64{off, int64(len(p))})
	l.mu.Unlock()
	return l.r.ReadAt(p, off)
}

// fingerprintByDefinition hashes the metadata as the provenance record
// defines it (convert.Fingerprint): the header cluster; each L1 entry, then
// the L2 table it points at; each refcount table entry, then the refcount
// block it points at. Records written by earlier versions hold this hash,
// so Fingerprint must never change it.
func fingerprintByDefinition(t *testing.T, b []byte) [32]byte {
	t.Helper()
	be := binary.BigEndian
	cs := int64(1) << be.Uint32(b[hClusterBits:])
	h := sha256.New()
	h.Write(b[:min(cs, int64(len(b)))])
	l1Off, l1Size := int64(be.Uint64(b[hL1Offset:])), int64(be.Uint32(b[hL1Size:]))
	for i := range l1Size {
		e := b[l1Off+i*8:][:8]
		h.Write(e)
		if off := int64(be.Uint64(e) & offsetMask); off != 0 {
			h.Write(b[off:][:cs])
		}
	}
	rtOff, rtLen := int64(be.Uint64(b[hRefcountOffset:])), int64(be.Uint32(b[hRefcountClusters:]))*cs
	for k := int64(0); k < rtLen; k += 8 {
		e := b[rtOff+k:][:8]
		h.Write(e)
		if off := int64(be.Uint64(e)); off != 0 {
			h.Write(b[off:][:cs])
		}
	}
	return [32]byte(h.Sum(nil))
}

// TestFingerprintDefinition: Fingerprint hashes what the record format
// defines, for images with and without L2 tables and refcount blocks
// beyond the first, v2 and v3, small and large clusters.
func TestFingerprintDefinition(t *testing.T) {
	for _, c := range []struct {
		name string
		size int64
		ext  []formats.Extent
		opts Options
	}{
		{"empty", 64 * sMiB, nil, Options{}},
		{"data", 64 * sMiB, []formats.Extent{{Off: 0, Len: sMiB, Kind: formats.Data}, {Off: 40 * sMiB, Len: 3 * sMiB, Kind: formats.Data}}, Options{}},
		{"512-byte clusters, many tables", 8 * sMiB, []formats.Extent{{Off: 512, Len: 6 * sMiB, Kind: formats.Data}}, Options{ClusterSize: 512}},
		{"v2", 8 * sMiB, []formats.Extent{{Off: 0, Len: sMiB, Kind: formats.Data}, {Off: 2 * sMiB, Len: sMiB, Kind: formats.Zero}}, Options{ClusterSize: 4096, Compat: CompatV2}},
		{"zero clusters", 8 * sMiB, []formats.Extent{{Off: 0, Len: sMiB, Kind: formats.Zero}, {Off: 4 * sMiB, Len: 4096, Kind: formats.Data}}, Options{ZeroClusters: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := writeImage(t, c.size, c.ext, c.opts)
			b, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			got, err := Fingerprint(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if want := fingerprintByDefinition(t, b); got != want {
				t.Fatalf("Fingerprint %x, by definition %x", got, want)
			}
		})
	}
}

// TestPlanUpdateReadsLittle: planning a small change reads the header,
// the L1 and refcount tables, the L2 table the change touches, and the
// refcount blocks it changes or needs to find the image's end — not every
// table and block: on a 64 GiB image with an L2 table per 512 MiB, and on
// one with 512-byte clusters (an L2 table per 32 KiB, a refcount block per
// 128 KiB of file). The plan writes the data and the new tables in one
// stage and the header alone after them.
func TestPlanUpdateReadsLittle(t *testing.T) {
	for _, c := range []struct {
		name      string
		size      int64
		every     int64 // a data cluster every this many bytes
		opts      Options
		change    formats.Extent
		maxTables int // cluster-sized reads allowed
	}{
		// L2 table, last refcount block, the block counting the new clusters.
		{"64 GiB", 64 << 30, 512 << 20, Options{}, formats.Extent{Off: 3<<30 + 1<<20, Len: 128 << 10, Kind: formats.Data}, 3},
		// The same, plus the blocks that count the L2 table, L1 table and
		// refcount table that the update frees.
		{"512-byte clusters", 16 * sMiB, 16 << 10, Options{ClusterSize: 512}, formats.Extent{Off: 5*sMiB + 4096, Len: 1024, Kind: formats.Data}, 8},
	} {
		t.Run(c.name, func(t *testing.T) {
			var ext []formats.Extent
			for off := int64(0); off < c.size; off += c.every {
				ext = append(ext, formats.Extent{Off: off, Len: 512, Kind: formats.Data})
			}
			f := writeImage(t, c.size, ext, c.opts)
			fs := fileSize(t, f)
			log := &readLog{r: f}
			u, err := PlanUpdate(log, fs, c.size, []formats.Extent{c.change})
			if err != nil {
				t.Fatal(err)
			}
			cs := c.opts.ClusterSize
			if cs == 0 {
				cs = DefaultClusterSize
			}
			var tables int
			for _, r := range log.reads {
				if r[1] == cs {
					tables++
				}
			}
			if tables > c.maxTables {
				t.Fatalf("%d cluster-sized reads of a %d-byte file, want at most %d: %v", tables, fs, c.maxTables, log.reads)
			}
			t.Logf("%d reads, %d of them cluster-sized, of a %d-byte file", len(log.reads), tables, fs)
			if len(u.Stages) != 2 {
				t.Fatalf("%d stages, want the data with the new tables, then the header", len(u.Stages))
			}
			var data, meta int
			for _, p := range u.Stages[0] {
				if p.IsData() {
					data++
				} else if p.Meta != nil {
					meta++
				}
			}
			if data == 0 || meta < 4 { // L2, L1, refcount block, refcount table
				t.Fatalf("first stage: %d data pieces, %d metadata pieces", data, meta)
			}
			if h := u.Stages[1]; len(h) != 1 || h[0].Off != 0 || h[0].Meta == nil {
				t.Fatalf("last stage %+v, want the header alone", h)
			}
		})
	}
}
