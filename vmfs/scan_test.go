package vmfs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// scanned finds the volume with the manifest's FS UUID.
func scannedByUUID(t *testing.T, r *ScanResult, uuid string) *ScannedVolume {
	t.Helper()
	for i := range r.Volumes {
		if r.Volumes[i].UUID == uuid {
			return &r.Volumes[i]
		}
	}
	t.Fatalf("no scanned volume has UUID %s: %+v", uuid, r.Volumes)
	return nil
}

func checkScanned(t *testing.T, sv *ScannedVolume, b *built, partOff int64, live bool) {
	t.Helper()
	m := b.m
	if sv.Version != m.VMFS || sv.Label != m.Label || sv.Capacity != m.Size || sv.BlockSize != m.BlockSize ||
		sv.Live != live || len(sv.Missing) != 0 || sv.Problem != "" || sv.LVUUID == "" {
		t.Errorf("%s: got %+v\nmanifest VMFS%d %q size %d block %d, live %v", m.UUID, sv, m.VMFS, m.Label, m.Size, m.BlockSize, live)
	}
	if len(sv.Extents) != len(b.images) {
		t.Fatalf("%s: %d extents, want %d", m.UUID, len(sv.Extents), len(b.images))
	}
	var next int64
	for i, e := range sv.Extents {
		// testimages names extent i IMG.i (IMG for one extent).
		if e.Device != b.images[i] || e.Index != i || e.Count != len(b.images) || e.PartitionOffset != partOff || e.Logical != next || e.Length <= 0 {
			t.Errorf("extent %d: %+v, want %s at partition offset %d, logical %d", i, e, b.images[i], partOff, next)
		}
		next = e.Logical + e.Length
	}
	if next != m.Size {
		t.Errorf("extents cover %d bytes of %d", next, m.Size)
	}
}

// Scan over image files in any order: a single-device volume, one spanned
// over three devices, a GPT-partitioned one with a live heartbeat; a file
// without VMFS, a missing file and a second path to one device are named.
func TestScanImages(t *testing.T) {
	s5, s3, g6 := buildVolume(t, "sample5"), buildVolume(t, "span3x6"), buildVolume(t, "gpt6")
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.img")
	if err := os.WriteFile(junk, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "again.img")
	if err := os.Symlink(s5.images[0], link); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nope.img")
	paths := []string{s3.images[2], junk, s5.images[0], s3.images[0], missing, g6.images[0], s3.images[1], link}
	r, err := Scan(ScanOptions{}, paths...)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Volumes) != 3 {
		t.Fatalf("%d volumes, want 3: %+v", len(r.Volumes), r.Volumes)
	}
	checkScanned(t, scannedByUUID(t, r, s5.m.UUID), s5, 0, false)
	checkScanned(t, scannedByUUID(t, r, s3.m.UUID), s3, 0, false)
	checkScanned(t, scannedByUUID(t, r, g6.m.UUID), g6, 1<<20, true)
	var others []string
	for _, o := range r.Other {
		others = append(others, o.Device)
		switch o.Device {
		case junk:
			if !strings.Contains(o.Reason, "no LVM header") {
				t.Errorf("junk: %q", o.Reason)
			}
		case missing:
			if !os.IsNotExist(o.Err) {
				t.Errorf("missing: %v", o.Err)
			}
		case link:
			if !strings.Contains(o.Reason, "same LVM device") || !strings.Contains(o.Reason, s5.images[0]) {
				t.Errorf("second path: %q", o.Reason)
			}
		}
	}
	slices.Sort(others)
	want := []string{link, junk, missing}
	slices.Sort(want)
	if !slices.Equal(others, want) {
		t.Errorf("other devices %v, want %v", others, want)
	}
}

// A spanned volume with extents missing: without its first device only
// the LVM is known; without a middle one, the FS descriptor still is.
func TestScanMissingExtents(t *testing.T) {
	b := buildVolume(t, "span3x6")
	r, err := Scan(ScanOptions{}, b.images[2], b.images[1])
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Volumes) != 1 {
		t.Fatalf("%d volumes", len(r.Volumes))
	}
	sv := r.Volumes[0]
	if sv.Version != 0 || sv.Label != "" || sv.Capacity != b.m.Size || !strings.Contains(sv.Problem, "first extent") ||
		len(sv.Missing) != 1 || sv.Missing[0].Index != 0 || sv.Missing[0].Logical != 0 || sv.Complete() {
		t.Errorf("first extent missing: %+v", sv)
	}
	if len(sv.Extents) != 2 || sv.Extents[0].Index != 1 || sv.Extents[1].Index != 2 || sv.Extents[0].Count != 3 ||
		sv.Extents[0].Device != b.images[1] {
		t.Errorf("extents: %+v", sv.Extents)
	}

	r, err = Scan(ScanOptions{}, b.images[2], b.images[0])
	if err != nil {
		t.Fatal(err)
	}
	sv = r.Volumes[0]
	if sv.Version != 6 || sv.Label != b.m.Label || sv.UUID != b.m.UUID || sv.Problem != "" ||
		len(sv.Missing) != 1 || sv.Missing[0].Index != 1 || sv.Missing[0].Length <= 0 ||
		len(sv.Extents) != 2 || sv.Extents[0].Index != 0 || sv.Extents[1].Index != 2 {
		t.Errorf("middle extent missing: %+v", sv)
	}
}
