package convert

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/qcow2"
	"github.com/vmfs2vhd/vmfs2vhd/formats/raw"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhd"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhdx"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

// noSync is an *os.File whose Sync does nothing: the bulk tests need no
// durability and the machine's fsyncs would dominate their time.
type noSync struct{ *os.File }

func (noSync) Sync() error { return nil }

// applyFast applies an update to the file at path like Apply, without
// fsyncs.
func applyFast(t *testing.T, path, format string, img formats.Image, ch []formats.Extent) error {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	_, err = ApplyTo(context.Background(), noSync{f}, fi.Size(), format, img, ch)
	return err
}

func formatNamed(t *testing.T, name string) updFormat {
	t.Helper()
	for _, f := range updFormats {
		if f.name == name {
			return f
		}
	}
	t.Fatalf("no format %s", name)
	return updFormat{}
}

// baseFile writes the base content in format f to dir and returns its path.
func baseFile(t *testing.T, f updFormat, dir string) (string, *content) {
	t.Helper()
	cur := newContent(updSize, updBase, 1)
	l, err := f.plan(updSize, mustExtents(t, cur))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "out."+f.qemu)
	writeFile(t, path, layoutBytes(t, l, cur))
	return path, cur
}

// TestUpdateResize: raw, qcow2 and VHDX follow a disk that grew (VHDX
// within its BAT region); VHD refuses; a disk that shrank is refused
// everywhere.
func TestUpdateResize(t *testing.T) {
	grown := updSize + 2*mib
	ch := []formats.Extent{{Off: updSize + 512*kib, Len: 64 * kib, Kind: formats.Data}}
	for _, tc := range []struct {
		name string
		ok   bool
		err  error
	}{
		{"raw", true, nil},
		{"qcow2-v3-512", true, nil},
		{"qcow2-v2-512", true, nil},
		{"vhd-dynamic", false, vhd.ErrInvalid},
		{"vhd-fixed", false, vhd.ErrInvalid},
		{"vhdx", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := formatNamed(t, tc.name)
			dir := t.TempDir()
			path, cur := baseFile(t, f, dir)
			before, _ := os.ReadFile(path)
			next := &content{size: grown, segs: append(append([]cseg(nil), cur.segs...), cseg{Extent: formats.Extent{Off: updSize, Len: grown - updSize, Kind: formats.Hole}})}
			next = next.with(ch, 77)
			if tc.ok { // crash safety of a growing update, in memory
				m := newMem(before)
				if _, err := apply(t, m, f, next, ch); err != nil {
					t.Fatal(err)
				}
				crashes(t, f, before, m.b, next, ch, m.writes, 9)
			}
			_, err := Apply(context.Background(), path, f.format, next, ch)
			if !tc.ok {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Apply of a grown disk = %v, want %v", err, tc.err)
				}
				if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
					t.Fatal("a refused update changed the file")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			sameContent(t, f, b, next)
			fresh, err := f.plan(grown, mustExtents(t, next))
			if err != nil {
				t.Fatal(err)
			}
			fpath := filepath.Join(dir, "fresh."+f.qemu)
			writeFile(t, fpath, layoutBytes(t, fresh, next))
			oracles(t, f, path, fpath)

			if f.format == "vhdx" {
				// Beyond what the 1 MiB BAT region can map: refused.
				_, err := vhdx.PlanUpdate(bytes.NewReader(b), int64(len(b)), 200<<30, nil)
				if !errors.Is(err, vhdx.ErrInvalid) || !strings.Contains(err.Error(), "cannot grow") {
					t.Fatalf("growing past the BAT region: %v", err)
				}
			}
			// Shrinking back is refused.
			small := newContent(updSize-mib, nil, 1)
			if _, err := Apply(context.Background(), path, f.format, small, nil); err == nil {
				t.Fatal("Apply of a smaller disk succeeded")
			}
		})
	}
}

// TestApplyRawPunch: zero ranges of a raw image are deallocated.
func TestApplyRawPunch(t *testing.T) {
	f := formatNamed(t, "raw")
	dir := t.TempDir()
	path, cur := baseFile(t, f, dir)
	used := synth.DiskUsage(t, path)
	ch := []formats.Extent{
		{Off: 100, Len: 1000, Kind: formats.Data},
		{Off: 64 * kib, Len: 900*kib + 100, Kind: formats.Zero}, // aligned middle, unaligned end
	}
	next := cur.with(ch, 9)
	var done int64
	st, err := Apply(context.Background(), path, "raw", next, ch, UpdateOptions{Progress: func(n int64) { done += n }})
	if err != nil {
		t.Fatal(err)
	}
	if done != st.Applied() || done != 1000+900*kib+100 {
		t.Fatalf("progress reported %d bytes, stats %+v", done, st)
	}
	b, _ := os.ReadFile(path)
	sameContent(t, f, b, next)
	if st.ZeroBytes != 900*kib+100 || st.DataBytes != 1000 {
		t.Fatalf("stats %+v", st)
	}
	if st.Punched == 0 {
		t.Skipf("the file system did not punch holes (stats %+v)", st)
	}
	if now := synth.DiskUsage(t, path); now > used-st.Punched+64*kib {
		t.Fatalf("disk usage %d after punching %d bytes, %d before", now, st.Punched, used)
	}
}

// TestOutputFingerprint: data written in place leaves the fingerprint's
// metadata hash alone; one metadata byte changes it.
func TestOutputFingerprint(t *testing.T) {
	// corrupt changes one metadata byte of a file of each format, keeping
	// it readable.
	vhdFooter := func(b []byte) {
		f := b[len(b)-512:]
		f[27]++ // timestamp
		var sum uint32
		for i, c := range f {
			if i < 64 || i >= 68 {
				sum += uint32(c)
			}
		}
		binary.BigEndian.PutUint32(f[64:], ^sum)
	}
	corrupt := map[string]func(b []byte){
		"vhd-dynamic":  vhdFooter,
		"vhd-fixed":    vhdFooter,
		"vhdx":         func(b []byte) { b[3*mib+2*8] = 0 }, // block 2: ZERO → NOT_PRESENT
		"qcow2-v3-64k": func(b []byte) { b[71] = 1 },        // snapshots offset, unused
	}
	for name, change := range corrupt {
		t.Run(name, func(t *testing.T) {
			f := formatNamed(t, name)
			dir := t.TempDir()
			path, cur := baseFile(t, f, dir)
			fp0, err := OutputFingerprint(path, f.format)
			if err != nil {
				t.Fatal(err)
			}
			if len(fp0.Metadata) != 64 || fp0.Size == 0 || fp0.ModTime.IsZero() {
				t.Fatalf("fingerprint %+v", fp0)
			}
			ch := []formats.Extent{{Off: 512 * kib, Len: 8 * kib, Kind: formats.Data}}
			if _, err := Apply(context.Background(), path, f.format, cur.with(ch, 5), ch); err != nil {
				t.Fatal(err)
			}
			fp1, err := OutputFingerprint(path, f.format)
			if err != nil {
				t.Fatal(err)
			}
			if fp1.Metadata != fp0.Metadata || fp1.Size != fp0.Size {
				t.Fatalf("data written in place changed the fingerprint: %+v → %+v", fp0, fp1)
			}
			b, _ := os.ReadFile(path)
			change(b)
			writeFile(t, path, b)
			fp2, err := OutputFingerprint(path, f.format)
			if err != nil {
				t.Fatal(err)
			}
			if fp2.Metadata == fp0.Metadata {
				t.Fatal("a changed metadata byte left the fingerprint alone")
			}
		})
	}
	t.Run("raw", func(t *testing.T) {
		if raw.Fingerprint(1<<20) == raw.Fingerprint(1<<20+512) {
			t.Fatal("raw fingerprint ignores the size")
		}
		dir := t.TempDir()
		path, _ := baseFile(t, formatNamed(t, "raw"), dir)
		fp0, err := OutputFingerprint(path, "raw")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		b[10] ^= 1 // data only
		writeFile(t, path, b)
		fp1, _ := OutputFingerprint(path, "raw")
		if fp1.Metadata != fp0.Metadata {
			t.Fatal("a data byte changed a raw image's fingerprint")
		}
	})
	t.Run("qcow2-l2", func(t *testing.T) {
		// An L2 entry of a v3 image gets the zero flag: a structural change.
		dir := t.TempDir()
		path, _ := baseFile(t, formatNamed(t, "qcow2-v3-64k"), dir)
		fp0, _ := OutputFingerprint(path, "qcow2")
		b, _ := os.ReadFile(path)
		l1 := binary.BigEndian.Uint64(b[40:])
		l2 := binary.BigEndian.Uint64(b[l1:]) & 0x00fffffffffffe00
		b[l2+7] |= 1
		writeFile(t, path, b)
		fp1, err := OutputFingerprint(path, "qcow2")
		if err != nil {
			t.Fatal(err)
		}
		if fp1.Metadata == fp0.Metadata {
			t.Fatal("an L2 entry change left the fingerprint alone")
		}
	})
}

// TestPlanUpdateRefusals: what an updater cannot do is refused before
// anything is written.
func TestPlanUpdateRefusals(t *testing.T) {
	// qcow2 with an internal snapshot.
	f := formatNamed(t, "qcow2-v3-64k")
	dir := t.TempDir()
	path, cur := baseFile(t, f, dir)
	oracle.Run(t, "qemu-img", "snapshot", "-c", "s1", path)
	b, _ := os.ReadFile(path)
	ch := []formats.Extent{{Off: 0, Len: 4096, Kind: formats.Data}}
	if _, err := qcow2.PlanUpdate(bytes.NewReader(b), int64(len(b)), updSize, ch); !errors.Is(err, qcow2.ErrUnsupported) {
		t.Fatalf("qcow2 with a snapshot: %v, want ErrUnsupported", err)
	}
	// A bad change list.
	bad := []formats.Extent{{Off: 8192, Len: 4096, Kind: formats.Data}, {Off: 0, Len: 4096, Kind: formats.Data}}
	if _, err := PlanUpdate(bytes.NewReader(b), int64(len(b)), "raw", cur, bad); !errors.Is(err, raw.ErrInvalid) {
		t.Fatalf("unsorted changes: %v", err)
	}
	if _, err := PlanUpdate(bytes.NewReader(b), int64(len(b)), "vmdk", cur, nil); !errors.Is(err, ErrUpdateFormat) {
		t.Fatalf("unknown format: %v", err)
	}
}

// TestUpdateQemuMade: the updaters also handle files qemu-img wrote
// (header extensions, other placements, a VHD whose blocks are not
// aligned, qemu's VHDX region order).
func TestUpdateQemuMade(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    updFormat
		opts []string
	}{
		{"qcow2", formatNamed(t, "qcow2-v3-64k"), nil},
		{"qcow2-v2", formatNamed(t, "qcow2-v2-512"), []string{"-o", "compat=0.10"}},
		{"vhdx", formatNamed(t, "vhdx"), nil},
		{"vpc", formatNamed(t, "vhd-dynamic"), []string{"-o", "force_size=on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cur := newContent(updSize, updBase, 1)
			rawPath := filepath.Join(dir, "base.raw")
			rl, _ := raw.Plan(updSize, mustExtents(t, cur))
			writeFile(t, rawPath, layoutBytes(t, rl, cur))
			path := filepath.Join(dir, "out."+tc.f.qemu)
			args := append([]string{"convert", "-f", "raw", "-O", tc.f.qemu}, tc.opts...)
			oracle.Run(t, "qemu-img", append(args, rawPath, path)...)
			for step, ch := range updSets {
				next := cur.with(ch, uint64(50+step))
				if err := applyFast(t, path, tc.f.format, next, ch); err != nil {
					t.Fatalf("step %d: %v", step+1, err)
				}
				nl, _ := raw.Plan(updSize, mustExtents(t, next))
				want := filepath.Join(dir, "want.raw")
				writeFile(t, want, layoutBytes(t, nl, next))
				oracle.Run(t, "qemu-img", "compare", "-f", tc.f.qemu, "-F", "raw", path, want)
				if tc.f.format != "vhd" {
					oracle.Run(t, "qemu-img", "check", "-f", tc.f.qemu, path)
				}
				b, _ := os.ReadFile(path)
				sameContent(t, tc.f, b, next)
				cur = next
			}
		})
	}
}

// randomChanges returns a sorted change list of n runs with random kinds,
// offsets and lengths (sector-aligned, up to maxLen) within size.
func randomChanges(r *rand.Rand, size, maxLen int64, n int) []formats.Extent {
	var out []formats.Extent
	pos := int64(0)
	for range n {
		gap := r.Int64N(size/int64(n)/512+1) * 512
		l := (r.Int64N(maxLen/512) + 1) * 512
		off := pos + gap
		if off >= size {
			break
		}
		l = min(l, size-off)
		kind := []formats.Kind{formats.Data, formats.Data, formats.Zero, formats.Hole}[r.IntN(4)]
		out = append(out, formats.Extent{Off: off, Len: l, Kind: kind})
		pos = off + l
	}
	return out
}

// TestUpdateRandom applies ten random change sets in a row, checking the
// content and qemu's view after each.
func TestUpdateRandom(t *testing.T) {
	for _, name := range []string{"qcow2-v3-512", "qcow2-v2-512", "vhd-dynamic", "vhdx"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := formatNamed(t, name)
			dir := t.TempDir()
			path, cur := baseFile(t, f, dir)
			r := rand.New(rand.NewPCG(7, uint64(len(name))))
			for step := range 10 {
				ch := randomChanges(r, updSize, []int64{8 * kib, 300 * kib, 3 * mib}[step%3], 1+r.IntN(12))
				next := cur.with(ch, uint64(1000+step))
				if err := applyFast(t, path, f.format, next, ch); err != nil {
					t.Fatalf("step %d: %v", step+1, err)
				}
				b, _ := os.ReadFile(path)
				sameContent(t, f, b, next)
				if f.format != "vhd" {
					oracle.Run(t, "qemu-img", "check", "-f", f.qemu, path)
				}
				cur = next
			}
			nl, _ := raw.Plan(updSize, mustExtents(t, cur))
			want := filepath.Join(dir, "want.raw")
			writeFile(t, want, layoutBytes(t, nl, cur))
			oracle.Run(t, "qemu-img", "compare", "-f", f.qemu, "-F", "raw", path, want)
		})
	}
}

// TestUpdateVHDPartialBitmap: data written into sectors whose bitmap bit
// is clear is widened to whole sectors and the bits are set.
func TestUpdateVHDPartialBitmap(t *testing.T) {
	f := formatNamed(t, "vhd-dynamic")
	base := newContent(updSize, []formats.Extent{{Off: 0, Len: mib, Kind: formats.Data}}, 3)
	l, err := f.plan(updSize, mustExtents(t, base))
	if err != nil {
		t.Fatal(err)
	}
	b := layoutBytes(t, l, base)
	// Block 0's bitmap: the sector before its data (4 KiB-aligned).
	bat := binary.BigEndian.Uint32(b[1536:])
	bm := b[int64(bat)*512:][:512]
	for s := 10; s <= 20; s++ {
		bm[s/8] &^= 0x80 >> (s % 8)
	}
	cur := base.with([]formats.Extent{{Off: 10 * 512, Len: 11 * 512, Kind: formats.Hole}}, 0)
	sameContent(t, f, b, cur)
	ch := []formats.Extent{{Off: 12*512 + 100, Len: 50, Kind: formats.Data}}
	next := cur.with(ch, 4)
	m := newMem(b)
	if _, err := apply(t, m, f, next, ch); err != nil {
		t.Fatal(err)
	}
	sameContent(t, f, m.b, next)
	bm = m.b[int64(bat)*512:][:512]
	if bm[12/8]&(0x80>>(12%8)) == 0 || bm[11/8]&(0x80>>(11%8)) != 0 || bm[13/8]&(0x80>>(13%8)) != 0 {
		t.Fatalf("bitmap bits 11–13 = %08b %08b, want only sector 12 set", bm[1], bm[1])
	}
}
