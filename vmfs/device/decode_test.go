package device

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBlocksToSize(t *testing.T) {
	for _, tc := range []struct {
		count uint64
		bs    uint32
		want  int64
		ok    bool
	}{
		{1953525168, 512, 1000204886016, true}, // a 1 TB disk
		{244190646, 4096, 1000204886016, true}, // the same, 4Kn
		{0, 512, 0, true},
		{1 << 60, 4096, 0, false}, // overflows
		{100, 0, 0, false},
		{100, 520, 0, false},
	} {
		got, err := blocksToSize(tc.count, tc.bs)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("blocksToSize(%d, %d) = %d, %v", tc.count, tc.bs, got, err)
		}
	}
}

func TestDecodeWindows(t *testing.T) {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, 1<<40)
	if n, err := decodeLengthInfo(b); n != 1<<40 || err != nil {
		t.Errorf("length info: %d, %v", n, err)
	}
	if _, err := decodeLengthInfo(b[:7]); err == nil {
		t.Error("short length info accepted")
	}
	binary.LittleEndian.PutUint64(b, 1<<63)
	if _, err := decodeLengthInfo(b); err == nil {
		t.Error("negative length accepted")
	}

	// DISK_GEOMETRY_EX of a 4Kn 2 TB drive, with the Data tail.
	g := make([]byte, 40)
	binary.LittleEndian.PutUint64(g[0:], 243201) // Cylinders
	binary.LittleEndian.PutUint32(g[8:], 12)     // FixedMedia
	binary.LittleEndian.PutUint32(g[12:], 255)   // TracksPerCylinder
	binary.LittleEndian.PutUint32(g[16:], 63)    // SectorsPerTrack
	binary.LittleEndian.PutUint32(g[20:], 4096)  // BytesPerSector
	binary.LittleEndian.PutUint64(g[24:], 2000398934016)
	if ss, size, err := decodeGeometryEx(g); ss != 4096 || size != 2000398934016 || err != nil {
		t.Errorf("geometry: %d %d %v", ss, size, err)
	}
	if _, _, err := decodeGeometryEx(g[:31]); err == nil {
		t.Error("short geometry accepted")
	}
	binary.LittleEndian.PutUint32(g[20:], 0)
	if _, _, err := decodeGeometryEx(g); err == nil {
		t.Error("BytesPerSector 0 accepted")
	}

	q := storageAlignmentQuery()
	if len(q) != 12 || binary.LittleEndian.Uint32(q) != 6 || binary.LittleEndian.Uint32(q[4:]) != 0 {
		t.Errorf("STORAGE_PROPERTY_QUERY = % x", q)
	}
	// STORAGE_ACCESS_ALIGNMENT_DESCRIPTOR of a 512e drive.
	d := make([]byte, 28)
	binary.LittleEndian.PutUint32(d[0:], 28)
	binary.LittleEndian.PutUint32(d[4:], 28)
	binary.LittleEndian.PutUint32(d[8:], 64)
	binary.LittleEndian.PutUint32(d[16:], 512)
	binary.LittleEndian.PutUint32(d[20:], 4096)
	if l, p, err := decodeAccessAlignment(d); l != 512 || p != 4096 || err != nil {
		t.Errorf("access alignment: %d %d %v", l, p, err)
	}
	if _, _, err := decodeAccessAlignment(d[:20]); err == nil {
		t.Error("short descriptor accepted")
	}
	binary.LittleEndian.PutUint32(d[4:], 8)
	if _, _, err := decodeAccessAlignment(d); err == nil {
		t.Error("descriptor Size 8 accepted")
	}

	if physicalDrive(3) != `\\.\PhysicalDrive3` {
		t.Error(physicalDrive(3))
	}
	for p, want := range map[string]bool{`\\.\PhysicalDrive0`: true, `//./PhysicalDrive1`: true, `C:\images\a.img`: false, `lun.img`: false} {
		if isWindowsDevicePath(p) != want {
			t.Errorf("isWindowsDevicePath(%q) != %v", p, want)
		}
	}
}

func TestSysBlockDevices(t *testing.T) {
	root := t.TempDir()
	mk := func(rel, size string, partition bool) {
		dir := filepath.Join(root, rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "size"), []byte(size+"\n"), 0o644)
		if partition {
			os.WriteFile(filepath.Join(dir, "partition"), []byte("1\n"), 0o644)
		}
	}
	mk("sda", "976773168", false)
	mk("sda/sda1", "2048", true)
	mk("sda/sda10", "2048", true)
	mk("sda/sda2", "974673920", true)
	mk("sda/queue", "0", false) // not a partition
	mk("sdb", "0", false)       // no medium
	mk("loop10", "2048", false)
	mk("loop9", "2048", false)
	mk("loop0", "0", false) // unbound
	mk("ram0", "8192", false)
	mk("dm-0", "4096", false)
	got, err := sysBlockDevices(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/dev/dm-0", "/dev/loop9", "/dev/loop10", "/dev/sda", "/dev/sda1", "/dev/sda2", "/dev/sda10"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestDarwinDevices(t *testing.T) {
	got := darwinDevices([]string{"disk0", "disk0s1", "disk10", "disk2", "disk2s10", "disk2s2", "rdisk0", "diskutil", "null", "disk1s1s1"})
	want := []string{"/dev/rdisk0", "/dev/rdisk2", "/dev/rdisk10", "/dev/rdisk0s1", "/dev/rdisk2s2", "/dev/rdisk2s10"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestAccessHint(t *testing.T) {
	for goos, want := range map[string]string{"linux": "disk", "windows": "Run as administrator", "darwin": "Full Disk Access", "plan9": "root"} {
		if h := accessHint(goos, false); !strings.Contains(h, want) {
			t.Errorf("%s: %q lacks %q", goos, h, want)
		}
	}
	if h := accessHint("linux", true); !strings.Contains(h, "even to root") {
		t.Errorf("root: %q", h)
	}
	e := &AccessError{Path: "/dev/sdb", Err: os.ErrPermission, Hint: accessHint("linux", false)}
	if !strings.Contains(e.Error(), "/dev/sdb") || !strings.Contains(e.Error(), "sudo") {
		t.Error(e.Error())
	}
}

// The decoders of what the OS answers never panic, and what they accept is
// plausible.
func FuzzDecode(f *testing.F) {
	g := make([]byte, 32)
	binary.LittleEndian.PutUint32(g[20:], 512)
	binary.LittleEndian.PutUint64(g[24:], 1<<30)
	f.Add(g)
	d := make([]byte, 28)
	binary.LittleEndian.PutUint32(d[4:], 28)
	binary.LittleEndian.PutUint32(d[16:], 4096)
	f.Add(d)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := decodeLengthInfo(b); err == nil && n < 0 {
			t.Errorf("length %d accepted", n)
		}
		if ss, size, err := decodeGeometryEx(b); err == nil && (!validSector(int64(ss)) || size < 0) {
			t.Errorf("geometry %d %d accepted", ss, size)
		}
		if l, _, err := decodeAccessAlignment(b); err == nil && !validSector(int64(l)) {
			t.Errorf("logical sector %d accepted", l)
		}
		if len(b) >= 12 {
			if size, err := blocksToSize(binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint32(b[8:])); err == nil && size < 0 {
				t.Errorf("size %d accepted", size)
			}
		}
	})
}
