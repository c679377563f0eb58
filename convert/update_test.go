package convert

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/qcow2"
	"github.com/vmfs2vhd/vmfs2vhd/formats/raw"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhd"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhdx"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
)

// content is a virtual disk built by successive change sets: sorted runs
// covering [0, size), Data runs filled from a synthetic image per seed.
type content struct {
	size int64
	segs []cseg
}

type cseg struct {
	formats.Extent
	seed uint64
}

func newContent(size int64, ext []formats.Extent, seed uint64) *content {
	c := &content{size: size, segs: []cseg{{Extent: formats.Extent{Off: 0, Len: size, Kind: formats.Hole}}}}
	return c.with(ext, seed)
}

// with returns the content after changes: each change's range takes its
// kind, Data from seed.
func (c *content) with(changes []formats.Extent, seed uint64) *content {
	segs := append([]cseg(nil), c.segs...)
	for _, ch := range changes {
		var out []cseg
		for _, s := range segs {
			if s.End() <= ch.Off || s.Off >= ch.End() {
				out = append(out, s)
				continue
			}
			if s.Off < ch.Off {
				out = append(out, cseg{formats.Extent{Off: s.Off, Len: ch.Off - s.Off, Kind: s.Kind}, s.seed})
			}
			if s.End() > ch.End() {
				out = append(out, cseg{formats.Extent{Off: ch.End(), Len: s.End() - ch.End(), Kind: s.Kind}, s.seed})
			}
		}
		out = append(out, cseg{ch, seed})
		sort.Slice(out, func(a, b int) bool { return out[a].Off < out[b].Off })
		segs = out
	}
	return &content{size: c.size, segs: segs}
}

func (c *content) Size() int64 { return c.size }

func (c *content) find(off int64) int {
	return sort.Search(len(c.segs), func(i int) bool { return c.segs[i].End() > off })
}

func (c *content) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= c.size {
		return formats.Extent{}, formats.ErrOutOfRange
	}
	s := c.segs[c.find(off)]
	return formats.Extent{Off: off, Len: s.End() - off, Kind: s.Kind}, nil
}

func (c *content) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > c.size-off {
		p, eof = p[:c.size-off], io.EOF
	}
	n := len(p)
	for i := c.find(off); len(p) > 0; i++ {
		s := c.segs[i]
		k := min(int64(len(p)), s.End()-off)
		if s.Kind == formats.Data {
			src := synth.New(1<<40, []formats.Extent{{Off: 0, Len: 1 << 40, Kind: formats.Data}}, s.seed)
			src.ReadAt(p[:k], off)
		} else {
			clear(p[:k])
		}
		p, off = p[k:], off+k
	}
	return n, eof
}

// memFile is an in-memory UpdateFile; after limit writes (limit >= 0)
// every write fails, as if the machine stopped there.
type memFile struct {
	b      []byte
	writes int
	limit  int
	trace  []int64 // offsets written, in order
}

var errCut = errors.New("simulated crash")

func newMem(b []byte) *memFile { return &memFile{b: bytes.Clone(b), limit: -1} }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if m.limit >= 0 && m.writes >= m.limit {
		return 0, errCut
	}
	m.writes++
	m.trace = append(m.trace, off)
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	copy(m.b[off:], p)
	return len(p), nil
}

func (m *memFile) Truncate(n int64) error {
	if n <= int64(len(m.b)) {
		m.b = m.b[:n]
	} else {
		m.b = append(m.b, make([]byte, n-int64(len(m.b)))...)
	}
	return nil
}

func (m *memFile) Sync() error { return nil }

// updFormat is one output format under test.
type updFormat struct {
	name, format, qemu string
	plan               func(size int64, ext []formats.Extent) (formats.Layout, error)
	open               func(r io.ReaderAt, size int64) (formats.Image, error)
	// after checks what a step (0, 1, 2) did beyond the content.
	after func(t *testing.T, step int, before, after []byte)
}

var updFormats = []updFormat{
	{name: "raw", format: "raw", qemu: "raw",
		plan: func(size int64, ext []formats.Extent) (formats.Layout, error) { return raw.Plan(size, ext) },
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return raw.Open(r, size) }},
	{name: "vhd-dynamic", format: "vhd", qemu: "vpc",
		plan: func(size int64, ext []formats.Extent) (formats.Layout, error) {
			return vhd.Plan(size, ext, vhd.Options{UUID: [16]byte{1}, Time: updTime})
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return vhd.Open(r, size) },
		after: func(t *testing.T, step int, before, after []byte) {
			img, err := vhd.Open(bytes.NewReader(after), int64(len(after)))
			if err != nil {
				t.Fatal(err)
			}
			if at := img.Info().FooterAt; at != int64(len(after))-512 {
				t.Fatalf("step %d: footer used at %d, want the end of the %d-byte file", step+1, at, len(after))
			}
			if step == 0 && len(after) <= len(before) {
				t.Fatalf("step 1 allocated no block: %d bytes before, %d after", len(before), len(after))
			}
			if !bytes.Equal(after[:512], before[:512]) {
				t.Fatalf("step %d: the footer copy at offset 0 changed", step+1)
			}
		}},
	{name: "vhd-fixed", format: "vhd", qemu: "vpc",
		plan: func(size int64, ext []formats.Extent) (formats.Layout, error) {
			return vhd.Plan(size, ext, vhd.Options{Fixed: true, UUID: [16]byte{1}, Time: updTime})
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return vhd.Open(r, size) }},
	{name: "vhdx", format: "vhdx", qemu: "vhdx",
		plan: func(size int64, ext []formats.Extent) (formats.Layout, error) {
			return vhdx.Plan(size, ext, vhdx.Options{BlockSize: mib})
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return vhdx.Open(r, size) },
		after: func(t *testing.T, step int, before, after []byte) {
			if step == 1 { // [0, 1 MiB) became a hole: block 0 is PAYLOAD_BLOCK_ZERO
				wantKind(t, vhdx.Open, after, 0, formats.Zero)
			}
		}},
	{name: "qcow2-v3-512", format: "qcow2", qemu: "qcow2",
		plan: func(size int64, ext []formats.Extent) (formats.Layout, error) {
			return qcow2.Plan(size, ext, qcow2.Options{ClusterSize: 512})
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return qcow2.Open(r, size) },
		after: func(t *testing.T, step int, before, after []byte) {
			if step == 1 { // whole clusters became zero: zero flag
				wantKind(t, qcow2.Open, after, 0, formats.Zero)
			}
			if step == 2 { // the file passed 8 MiB: 64 refcount blocks no longer do
				b, a := binary.BigEndian.Uint32(before[56:]), binary.BigEndian.Uint32(after[56:])
				if a <= b {
					t.Fatalf("refcount table of %d clusters, %d before: it did not grow", a, b)
				}
			}
		}},
	{name: "qcow2-v3-64k", format: "qcow2", qemu: "qcow2",
		plan: func(size int64, ext []formats.Extent) (formats.Layout, error) {
			return qcow2.Plan(size, ext, qcow2.Options{ZeroClusters: true})
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return qcow2.Open(r, size) }},
	{name: "qcow2-v2-512", format: "qcow2", qemu: "qcow2",
		plan: func(size int64, ext []formats.Extent) (formats.Layout, error) {
			return qcow2.Plan(size, ext, qcow2.Options{ClusterSize: 512, Compat: qcow2.CompatV2})
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return qcow2.Open(r, size) },
		after: func(t *testing.T, step int, before, after []byte) {
			if step == 1 { // no zero flag in v2: zeros written in place
				wantKind(t, qcow2.Open, after, 0, formats.Data)
			}
		}},
}

const updSize = 12 * mib

var updBase = []formats.Extent{
	{Off: 0, Len: mib, Kind: formats.Data},
	{Off: mib, Len: mib, Kind: formats.Zero},
	{Off: 5 * mib, Len: 300 * kib, Kind: formats.Data},
	{Off: 9*mib + 4*kib, Len: 36 * kib, Kind: formats.Data},
}

// updSets are three successive change sets.
var updSets = [][]formats.Extent{
	{ // data over data, data over holes (new blocks/clusters, unaligned), a partial zero, the disk's last bytes
		{Off: 512 * kib, Len: 8 * kib, Kind: formats.Data},
		{Off: 3*mib + 512, Len: 64 * kib, Kind: formats.Data},
		{Off: 5*mib + 100*kib, Len: 3 * kib, Kind: formats.Zero},
		{Off: 12*mib - 4*kib, Len: 4 * kib, Kind: formats.Data},
	},
	{ // whole units become zero; data over a Zero run; new L2 tables
		{Off: 0, Len: mib, Kind: formats.Hole},
		{Off: mib + 4*kib, Len: 8 * kib, Kind: formats.Data},
		{Off: 5 * mib, Len: 300 * kib, Kind: formats.Zero},
		{Off: 7 * mib, Len: 256 * kib, Kind: formats.Data},
	},
	{ // data into zeroed clusters; a large allocation (qcow2 with 512-byte
		// clusters: new refcount blocks and a larger refcount table)
		{Off: 0, Len: 4 * kib, Kind: formats.Zero},
		{Off: 64 * kib, Len: kib, Kind: formats.Data},
		{Off: mib + 64*kib, Len: 10 * mib, Kind: formats.Data},
		{Off: 11*mib + 512*kib, Len: 100 * kib, Kind: formats.Hole},
	},
}

// layoutBytes writes l with src into memory.
func layoutBytes(t *testing.T, l formats.Layout, src formats.Image) []byte {
	t.Helper()
	m := newMem(nil)
	if err := formats.WriteLayout(m, l, src, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := m.Truncate(l.FileSize()); err != nil {
		t.Fatal(err)
	}
	return m.b
}

// sameContent reads b with f's reader and compares every byte with want.
func sameContent(t *testing.T, f updFormat, b []byte, want formats.Image) {
	t.Helper()
	img, err := f.open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("%s: reading the update back: %v", f.name, err)
	}
	if img.Size() < want.Size() {
		t.Fatalf("%s: size %d, want %d", f.name, img.Size(), want.Size())
	}
	got, exp := make([]byte, want.Size()), make([]byte, want.Size())
	if _, err := formats.ReadFull(img, got, 0); err != nil {
		t.Fatal(err)
	}
	want.ReadAt(exp, 0)
	if i := firstDiff(got, exp); i >= 0 {
		t.Fatalf("%s: content differs from the new disk at %d", f.name, i)
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i += 4096 {
		j := min(i+4096, len(a), len(b))
		if !bytes.Equal(a[i:j], b[i:j]) {
			for k := i; k < j; k++ {
				if a[k] != b[k] {
					return k
				}
			}
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func apply(t *testing.T, m *memFile, f updFormat, img formats.Image, ch []formats.Extent) (ApplyStats, error) {
	t.Helper()
	return ApplyTo(context.Background(), m, int64(len(m.b)), f.format, img, ch)
}

func TestUpdateFormats(t *testing.T) {
	for _, f := range updFormats {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cur := newContent(updSize, updBase, 1)
			l, err := f.plan(updSize, mustExtents(t, cur))
			if err != nil {
				t.Fatal(err)
			}
			file := layoutBytes(t, l, cur)
			for step, ch := range updSets {
				next := cur.with(ch, uint64(101*(step+1)))
				before := file

				m := newMem(before)
				st, err := apply(t, m, f, next, ch)
				if err != nil {
					t.Fatalf("step %d: %v", step+1, err)
				}
				if st.DataBytes == 0 {
					t.Fatalf("step %d: no data applied: %+v", step+1, st)
				}
				after := m.b
				sameContent(t, f, after, next)

				// Idempotence: the same update again changes nothing.
				again := newMem(after)
				if _, err := apply(t, again, f, next, ch); err != nil {
					t.Fatalf("step %d, again: %v", step+1, err)
				}
				if i := firstDiff(again.b, after); i >= 0 {
					t.Fatalf("step %d: a second run changed byte %d", step+1, i)
				}

				if f.after != nil {
					f.after(t, step, before, after)
				}
				crashes(t, f, before, after, next, ch, m.writes, uint64(step))

				// Oracles: against a fresh conversion of the new content.
				fresh, err := f.plan(updSize, mustExtents(t, next))
				if err != nil {
					t.Fatal(err)
				}
				upath := filepath.Join(dir, fmt.Sprintf("upd%d.%s", step+1, f.qemu))
				fpath := filepath.Join(dir, fmt.Sprintf("fresh%d.%s", step+1, f.qemu))
				writeFile(t, upath, after)
				writeFile(t, fpath, layoutBytes(t, fresh, next))
				oracles(t, f, upath, fpath)
				if f.format == "vhdx" {
					logReplay(t, f, dir, before, next, ch, fpath, step)
				}
				cur, file = next, after
			}
		})
	}
}

func wantKind[I formats.Image](t *testing.T, open func(io.ReaderAt, int64) (I, error), b []byte, off int64, want formats.Kind) {
	t.Helper()
	img, err := open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	e, err := img.Extent(off)
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != want {
		t.Fatalf("extent at %d is %v, want %v", off, e.Kind, want)
	}
}

func mustExtents(t *testing.T, img formats.Image) []formats.Extent {
	t.Helper()
	ext, err := formats.Extents(img)
	if err != nil {
		t.Fatal(err)
	}
	return ext
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// crashes cuts the update of before after N writes, for N over the writes
// the update makes (all of them, or 40 seeded samples and both ends), and
// re-runs it: the result must be byte-identical to an uninterrupted run.
// Each cut state must also still open with the format's reader (VHDX: once
// a pending log is replayed by the re-run's planner).
func crashes(t *testing.T, f updFormat, before, after []byte, next formats.Image, ch []formats.Extent, total int, seed uint64) {
	t.Helper()
	ns := []int{0, total - 1}
	if total <= 18 {
		ns = ns[:0]
		for n := range total {
			ns = append(ns, n)
		}
	} else {
		r := rand.New(rand.NewPCG(seed, 15))
		for range 16 {
			ns = append(ns, r.IntN(total))
		}
	}
	dir := t.TempDir()
	for i, n := range ns {
		m := newMem(before)
		m.limit = n
		if _, err := apply(t, m, f, next, ch); !errors.Is(err, errCut) {
			t.Fatalf("cut after %d of %d writes: %v, want the simulated crash", n, total, err)
		}
		if f.format != "vhdx" {
			if _, err := f.open(bytes.NewReader(m.b), int64(len(m.b))); err != nil {
				t.Fatalf("cut after %d of %d writes: the file does not open: %v", n, total, err)
			}
		}
		if (f.format == "vhdx" || f.format == "qcow2") && i%3 == 0 {
			// qemu finds the cut file consistent (VHDX: once it has
			// replayed a pending log, as Hyper-V would on open).
			path := filepath.Join(dir, fmt.Sprintf("cut%d.%s", n, f.qemu))
			writeFile(t, path, m.b)
			if f.format == "vhdx" {
				oracle.Run(t, "qemu-img", "check", "-r", "all", "-f", "vhdx", path)
				b, _ := os.ReadFile(path)
				if _, err := f.open(bytes.NewReader(b), int64(len(b))); err != nil {
					t.Fatalf("cut after %d of %d writes, replayed by qemu: %v", n, total, err)
				}
			}
			oracle.Run(t, "qemu-img", "check", "-f", f.qemu, path)
		}
		m.limit = -1
		if _, err := apply(t, m, f, next, ch); err != nil {
			t.Fatalf("re-run after a cut after %d of %d writes: %v", n, total, err)
		}
		if i := firstDiff(m.b, after); i >= 0 {
			t.Fatalf("re-run after a cut after %d of %d writes: byte %d differs from an uninterrupted update", n, total, i)
		}
	}
}

func oracles(t *testing.T, f updFormat, upd, fresh string) {
	t.Helper()
	if _, stderr, err := oracle.RunErr(t, "qemu-img", "compare", "-f", f.qemu, "-F", f.qemu, upd, fresh); err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", filepath.Base(upd), filepath.Base(fresh), err, stderr)
	}
	switch f.format {
	case "qcow2":
		oracle.Run(t, "qemu-img", "check", "-f", "qcow2", upd)
		if out := oracle.Run(t, "qcowinfo", upd); !bytes.Contains(out, []byte("Media size")) {
			t.Fatalf("qcowinfo: %s", out)
		}
	case "vhdx":
		oracle.Run(t, "qemu-img", "check", "-f", "vhdx", upd)
		oracle.Run(t, "vhdiinfo", upd)
	case "vhd":
		oracle.Run(t, "vhdiinfo", upd)
	}
}

// logReplay cuts the VHDX update right after its log entry is written,
// before the BAT is written in place, and has qemu replay the log.
func logReplay(t *testing.T, f updFormat, dir string, before []byte, next formats.Image, ch []formats.Extent, fresh string, step int) {
	t.Helper()
	m := newMem(before)
	if _, err := apply(t, m, f, next, ch); err != nil {
		t.Fatal(err)
	}
	n := -1
	for i, off := range m.trace {
		if off == mib { // the log region of files vhdx.Plan writes
			n = i + 1
		}
	}
	if n < 0 {
		t.Fatalf("step %d: the update wrote no log entry", step+1)
	}
	m = newMem(before)
	m.limit = n
	if _, err := apply(t, m, f, next, ch); !errors.Is(err, errCut) {
		t.Fatalf("cut after the log: %v", err)
	}
	if _, err := vhdx.Open(bytes.NewReader(m.b), int64(len(m.b))); !errors.Is(err, vhdx.ErrDirtyLog) {
		t.Fatalf("after the log write, Open = %v, want ErrDirtyLog", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("dirty%d.vhdx", step+1))
	writeFile(t, path, m.b)
	out, stderr, err := oracle.RunErr(t, "qemu-img", "compare", "-f", "vhdx", "-F", "vhdx", path, fresh)
	if err == nil || !strings.Contains(string(stderr)+string(out), "replay") {
		t.Fatalf("qemu-img compare of a file with a pending log: %v, want a refusal asking for a replay\n%s%s", err, out, stderr)
	}
	oracle.Run(t, "qemu-img", "check", "-r", "all", "-f", "vhdx", path)
	oracle.Run(t, "qemu-img", "compare", "-f", "vhdx", "-F", "vhdx", path, fresh)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, f, b, next)
}

var updTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// TestApplyDirect: Apply on a file, with data chunks of 64 KiB and more
// written past the page cache where the file system does direct I/O, ends
// byte-identical to the same updates written through memory, step after
// step, for every format.
func TestApplyDirect(t *testing.T) {
	d, _ := openDirect(filepath.Join(t.TempDir(), "none")) // missing: nil
	if d != nil {
		t.Fatal("openDirect opened a file that does not exist")
	}
	for _, f := range updFormats {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path, cur := baseFile(t, f, dir)
			file, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			direct, _ := openDirect(path)
			if direct != nil {
				direct.Close()
			}
			var directBytes int64
			for step, ch := range updSets {
				next := cur.with(ch, uint64(101*(step+1)))
				m := newMem(file)
				want, err := apply(t, m, f, next, ch)
				if err != nil {
					t.Fatalf("step %d in memory: %v", step+1, err)
				}
				st, err := Apply(context.Background(), path, f.format, next, ch, UpdateOptions{Direct: DirectAlways})
				if err != nil {
					t.Fatalf("step %d: %v", step+1, err)
				}
				directBytes += st.DirectBytes
				if st.DirectBytes > st.DataBytes || st.DirectBytes%4096 != 0 {
					t.Fatalf("step %d: %d bytes written directly of %d", step+1, st.DirectBytes, st.DataBytes)
				}
				st.DirectBytes, st.Punched = 0, 0 // memory neither punches nor bypasses a cache
				if st != want {
					t.Fatalf("step %d: stats %+v, in memory %+v", step+1, st, want)
				}
				if file, err = os.ReadFile(path); err != nil {
					t.Fatal(err)
				}
				if i := firstDiff(file, m.b); i >= 0 {
					t.Fatalf("step %d: byte %d differs from the update written through memory", step+1, i)
				}
				cur = next
			}
			// Step 3 copies 10 MiB in 1 MiB chunks: raw and VHDX to 64 KiB-
			// aligned places, qcow2 with 64 KiB clusters to new clusters
			// (with 512-byte ones they need not start on a page).
			if direct != nil && (f.name == "raw" || f.name == "vhdx" || f.name == "qcow2-v3-64k") && directBytes == 0 {
				t.Errorf("no data written directly, on a file system that does direct I/O")
			}
			t.Logf("%d bytes written directly (direct I/O: %v)", directBytes, direct != nil)
		})
	}
}

// TestWriteDirect: what osUpdateFile.writeDirect takes, leaves to the page
// cache, and how it falls back when the kernel refuses a direct write.
func TestWriteDirect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	writeFile(t, path, make([]byte, 4*mib))
	d, align := openDirect(path)
	if d == nil {
		t.Skip("no direct I/O here")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	uf := &osUpdateFile{File: f, direct: d, align: align}
	defer func() {
		if uf.direct != nil {
			uf.direct.Close()
		}
	}()
	if align < 4096 || align&(align-1) != 0 {
		t.Fatalf("alignment %d", align)
	}
	buf := make([]byte, mib+4096)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for _, c := range []struct {
		name   string
		b      []byte
		off    int64
		direct bool
	}{
		{"aligned", buf[:mib], mib, true},
		{"short", buf[:directMin-align], 0, false},
		{"unaligned offset", buf[:directMin], align / 2, false},
		{"unaligned length", buf[:directMin+1], 2 * mib, false},
		{"shortest", buf[:directMin], 3 * mib, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ok, err := uf.writeDirect(c.b, c.off)
			if err != nil || ok != c.direct {
				t.Fatalf("writeDirect = %v, %v; want %v", ok, err, c.direct)
			}
			if !ok {
				return
			}
			got := make([]byte, len(c.b))
			if _, err := f.ReadAt(got, c.off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.b) {
				t.Fatal("the file does not hold the bytes written directly")
			}
		})
	}
	// A buffer the kernel finds misaligned: EINVAL, direct I/O off, the
	// caller writes the bytes itself.
	if ok, err := uf.writeDirect(buf[1:1+mib], 0); ok || err != nil {
		t.Fatalf("misaligned buffer: writeDirect = %v, %v; want a fallback", ok, err)
	}
	if uf.direct != nil {
		t.Fatal("direct I/O still on after the kernel refused a write")
	}
	if ok, err := uf.writeDirect(buf[:mib], 0); ok || err != nil {
		t.Fatalf("after the fallback: writeDirect = %v, %v", ok, err)
	}
}

// slowSource is a disk whose reads can be made to fail, and that counts
// the reads in flight.
type slowSource struct {
	formats.Image
	failAt          int64 // a read covering this offset fails (-1: none)
	inFlight, maxIn atomic.Int64
	reads           atomic.Int64
}

var errSource = errors.New("source read failed")

func (s *slowSource) ReadAt(p []byte, off int64) (int, error) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.maxIn.Load()
		if n <= m || s.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	s.reads.Add(1)
	time.Sleep(200 * time.Microsecond)
	if s.failAt >= off && s.failAt < off+int64(len(p)) {
		return 0, errSource
	}
	return s.Image.ReadAt(p, off)
}

// TestWriteUpdateStops: the read-ahead stops with the writer — on a
// cancelled context before the first write (nothing changed, not even the
// size), on one cancelled between two writes (the writes made are the
// plan's first ones, in order), and on a read error (a *ReadError at the
// failed chunk, the chunks before it written); no read is left running.
func TestWriteUpdateStops(t *testing.T) {
	f := formatNamed(t, "qcow2-v3-64k")
	cur := newContent(updSize, updBase, 1)
	l, err := f.plan(updSize, mustExtents(t, cur))
	if err != nil {
		t.Fatal(err)
	}
	before := layoutBytes(t, l, cur)
	ch := []formats.Extent{{Off: 0, Len: 6 * mib, Kind: formats.Data}, {Off: 7 * mib, Len: 3 * mib, Kind: formats.Data}}
	next := cur.with(ch, 5)
	plan, err := PlanUpdate(bytes.NewReader(before), int64(len(before)), "qcow2", next, ch)
	if err != nil {
		t.Fatal(err)
	}
	full := newMem(before)
	if _, err := WriteUpdate(context.Background(), full, int64(len(before)), plan, next); err != nil {
		t.Fatal(err)
	}

	t.Run("cancelled before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		m := newMem(before)
		st, err := WriteUpdate(ctx, m, int64(len(before)), plan, next)
		if !errors.Is(err, context.Canceled) || st != (ApplyStats{}) || m.writes != 0 || !bytes.Equal(m.b, before) {
			t.Fatalf("WriteUpdate = %+v, %v after %d writes", st, err, m.writes)
		}
	})
	for _, n := range []int{1, 3, 8} {
		t.Run(fmt.Sprintf("cancelled after %d writes", n), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			src := &slowSource{Image: next, failAt: -1}
			m := newMem(before)
			calls := 0
			_, err := WriteUpdate(ctx, m, int64(len(before)), plan, src, UpdateOptions{Progress: func(int64) {
				if calls++; calls == n {
					cancel()
				}
			}})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("WriteUpdate = %v, want cancelled", err)
			}
			if calls != n || len(m.trace) > len(full.trace) || !slices.Equal(m.trace, full.trace[:len(m.trace)]) {
				t.Fatalf("%d progress calls, writes at %v; an uninterrupted run writes at %v", calls, m.trace, full.trace)
			}
			if in := src.inFlight.Load(); in != 0 {
				t.Fatalf("%d reads still running", in)
			}
			if mx := src.maxIn.Load(); mx > updateReaders {
				t.Fatalf("%d reads in flight at once, want at most %d", mx, updateReaders)
			}
			if r := src.reads.Load(); r > int64(n+updateAhead) {
				t.Fatalf("%d chunks read for %d written: the read-ahead is not bounded", r, n)
			}
		})
	}
	t.Run("read error", func(t *testing.T) {
		src := &slowSource{Image: next, failAt: 4*mib + 100}
		m := newMem(before)
		_, err := WriteUpdate(context.Background(), m, int64(len(before)), plan, src)
		var re *ReadError
		if !errors.As(err, &re) || !errors.Is(err, errSource) || re.Off != 4*mib || re.Len != mib {
			t.Fatalf("WriteUpdate = %v, want a *ReadError of [4 MiB, +1 MiB)", err)
		}
		if len(m.trace) == 0 || !slices.Equal(m.trace, full.trace[:len(m.trace)]) {
			t.Fatalf("writes at %v; an uninterrupted run writes at %v", m.trace, full.trace)
		}
		if in := src.inFlight.Load(); in != 0 {
			t.Fatalf("%d reads still running", in)
		}
	})
}

// TestDirectMode: DirectNever writes nothing directly; DirectAuto goes
// direct once the page cache has proved slower than directSlow per MiB
// over directProbe bytes, and not before.
func TestDirectMode(t *testing.T) {
	f := formatNamed(t, "raw")
	path, cur := baseFile(t, f, t.TempDir())
	ch := []formats.Extent{{Off: 0, Len: 10 * mib, Kind: formats.Data}}
	st, err := Apply(context.Background(), path, "raw", cur.with(ch, 4), ch, UpdateOptions{Direct: DirectNever})
	if err != nil || st.DirectBytes != 0 || st.DataBytes != 10*mib {
		t.Fatalf("DirectNever: %+v, %v", st, err)
	}
	for _, c := range []struct {
		name   string
		chunks []time.Duration // per 1 MiB chunk written through the cache
		slow   bool
	}{
		{"fast", []time.Duration{200 * time.Microsecond, 300 * time.Microsecond, 250 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond}, false},
		{"slow but too few bytes", []time.Duration{3 * time.Millisecond, 3 * time.Millisecond, 3 * time.Millisecond}, false},
		{"slow", []time.Duration{2 * time.Millisecond, 1500 * time.Microsecond, 1800 * time.Microsecond, 1600 * time.Microsecond, 2 * time.Millisecond, 2 * time.Millisecond, 1700 * time.Microsecond, 1900 * time.Microsecond}, true},
		{"one slow start", []time.Duration{5 * time.Millisecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond, 200 * time.Microsecond}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r cacheRate
			r.add(4*kib, time.Second) // small writes do not count
			for _, d := range c.chunks {
				r.add(mib, d)
			}
			if r.slow() != c.slow {
				t.Fatalf("slow() = %v after %v", r.slow(), c.chunks)
			}
		})
	}
}
