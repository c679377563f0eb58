package vhd

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

func TestGeometryFor(t *testing.T) {
	tests := []struct {
		name string
		size int64
		want Geometry
	}{
		{"1MiB", 1 << 20, Geometry{30, 4, 17}},
		{"d2v 251MiB", 263454720, Geometry{510, 16, 63}},
		{"hyperv 127GiB", 136365211648, Geometry{65278, 16, 255}}, // as Hyper-V wrote it
		{"max", sectorsMaxCHS * SectorSize, MaxGeometry},
		{"2000GiB", 2000 << 30, MaxGeometry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := GeometryFor(tt.size)
			if got != tt.want {
				t.Errorf("GeometryFor(%d) = %v, want %v", tt.size, got, tt.want)
			}
			if got.Size() > tt.size {
				t.Errorf("C·H·S size %d exceeds %d", got.Size(), tt.size)
			}
		})
	}
}

// checkPieces checks the invariants every Layout must keep.
func checkPieces(t *testing.T, l formats.Layout) []formats.Piece {
	t.Helper()
	var ps []formats.Piece
	var end int64
	for p := range l.Pieces() {
		if p.Len <= 0 || p.Off < end || p.Off+p.Len > l.FileSize() || (p.Meta != nil && int64(len(p.Meta)) != p.Len) {
			t.Fatalf("bad piece %+v after %d in %d-byte file", p, end, l.FileSize())
		}
		if p.Meta == nil && p.Src < 0 {
			t.Fatalf("zero piece %+v: planner should leave zeros uncovered", p)
		}
		end = p.Off + p.Len
		ps = append(ps, p)
	}
	return ps
}

func TestPlanDynamic(t *testing.T) {
	const size = 7<<20 + 3*SectorSize // 4 blocks, the last partial
	ext := []formats.Extent{
		{Off: 0, Len: 4096, Kind: formats.Data},                   // block 0
		{Off: 4096, Len: 2<<20 - 4096, Kind: formats.Zero},        // rest of block 0, block 1 zero
		{Off: 2 << 20, Len: 2 << 20, Kind: formats.Hole},          // block 1
		{Off: 4 << 20, Len: 2<<20 + 512, Kind: formats.Data},      // block 2 and first sector of 3
		{Off: 6<<20 + 512, Len: 1<<20 + 1024, Kind: formats.Hole}, // rest of block 3
	}
	l, err := Plan(size, ext, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	ps := checkPieces(t, l)
	if l.Blocks != 3 || l.Size != size || l.Fixed {
		t.Fatalf("Blocks %d Size %d Fixed %v", l.Blocks, l.Size, l.Fixed)
	}
	// footer copy, header, BAT, (bitmap, data) × 3 with block 3's one
	// run split, footer
	var f footer
	copy(f[:], ps[0].Meta)
	if !bytes.Equal(ps[0].Meta, ps[len(ps)-1].Meta) || ps[len(ps)-1].Off != l.FileSize()-FooterSize {
		t.Fatal("footer copy differs from footer, or footer not at end")
	}
	if got := be.Uint32(f.checksum()); got != checksum(f[:], footerChecksumOff) {
		t.Errorf("footer checksum 0x%x", got)
	}
	if string(f.creatorApp()) != "win " || be.Uint64(f.currentSize()) != size || be.Uint64(f.originalSize()) != size ||
		be.Uint64(f.dataOffset()) != 512 || be.Uint32(f.diskType()) != typeDynamic || geometryFrom(f.geometry()) != GeometryFor(size) {
		t.Errorf("footer fields: % x", f[:96])
	}
	var h dynHeader
	copy(h[:], ps[1].Meta)
	if be.Uint32(h.maxEntries()) != 4 || be.Uint64(h.tableOffset()) != 1536 || be.Uint32(h.blockSize()) != BlockSize ||
		be.Uint32(h.checksum()) != checksum(h[:], headerChecksumOff) || be.Uint64(h.dataOffset()) != noOffset {
		t.Errorf("header fields: % x", h[:48])
	}
	bat := ps[2].Meta
	if len(bat) != 512 || ps[2].Off != 1536 {
		t.Fatalf("BAT %d bytes at %d", len(bat), ps[2].Off)
	}
	for i := 16; i < 512; i++ {
		if bat[i] != 0xFF {
			t.Fatalf("BAT padding byte %d = %x", i, bat[i])
		}
	}
	want := []struct{ block, dataOff int64 }{{0, 4096}, {2, 4096 + blockStride}, {3, 4096 + 2*blockStride}}
	if be.Uint32(bat[4:]) != batUnused {
		t.Error("block 1 allocated")
	}
	for _, w := range want {
		if got := int64(be.Uint32(bat[4*w.block:])) * SectorSize; got != w.dataOff-bitmapSize {
			t.Errorf("BAT[%d] -> %d, want %d", w.block, got, w.dataOff-bitmapSize)
		}
		if w.dataOff%dataAlign != 0 {
			t.Errorf("block %d data at %d not aligned", w.block, w.dataOff)
		}
	}
	wantData := []formats.Piece{
		{Off: 4096, Len: 4096, Src: 0},
		{Off: 4096 + blockStride, Len: 2 << 20, Src: 4 << 20},
		{Off: 4096 + 2*blockStride, Len: 512, Src: 6 << 20},
	}
	var gotData []formats.Piece
	for _, p := range ps {
		if p.IsData() {
			gotData = append(gotData, p)
		}
	}
	if fmt.Sprint(gotData) != fmt.Sprint(wantData) {
		t.Errorf("data pieces\n got %v\nwant %v", gotData, wantData)
	}
	if l.FileSize() != 4096+2*blockStride+BlockSize+FooterSize {
		t.Errorf("file size %d", l.FileSize())
	}
}

func TestPlanFixed(t *testing.T) {
	ext := []formats.Extent{{Off: 0, Len: 1 << 20, Kind: formats.Hole}, {Off: 1 << 20, Len: 512, Kind: formats.Data}}
	l, err := Plan(1<<20+512, ext, Options{Fixed: true, UUID: testOpts.UUID, Time: testOpts.Time})
	if err != nil {
		t.Fatal(err)
	}
	ps := checkPieces(t, l)
	if len(ps) != 2 || fmt.Sprint(ps[0]) != fmt.Sprint(formats.Piece{Off: 1 << 20, Len: 512, Src: 1 << 20}) || ps[1].Off != 1<<20+512 {
		t.Fatalf("pieces %v", ps)
	}
	var f footer
	copy(f[:], ps[1].Meta)
	if be.Uint64(f.dataOffset()) != noOffset || be.Uint32(f.diskType()) != typeFixed || l.FileSize() != 1<<20+1024 {
		t.Errorf("footer % x, file size %d", f[:64], l.FileSize())
	}
}

func TestPlanSizes(t *testing.T) {
	tests := []struct {
		name     string
		size     int64
		opts     Options
		wantSize int64
		wantErr  error
		noted    bool
	}{
		{"sector multiple", 100<<20 + 7*512, Options{}, 100<<20 + 7*512, nil, false},
		{"odd size rounds up to a sector", 1000, Options{}, 1024, nil, true},
		{"max", MaxSize, Options{}, MaxSize, nil, false},
		{"max+512", MaxSize + 512, Options{}, 0, ErrTooLarge, false},
		{"max+1 rounds past max", MaxSize + 1, Options{}, 0, ErrTooLarge, false},
		{"2TiB+1MiB", 2<<40 + 1<<20, Options{}, 0, ErrTooLarge, false},
		{"2TiB+1MiB fixed", 2<<40 + 1<<20, Options{Fixed: true}, 0, ErrTooLarge, false},
		{"azure 1MiB+512 -> 20MiB", 1<<20 + 512, Options{Azure: true}, 20 << 20, nil, true},
		{"azure 100MiB+7s -> 101MiB", 100<<20 + 7*512, Options{Azure: true}, 101 << 20, nil, true},
		{"azure exact", 30 << 20, Options{Azure: true}, 30 << 20, nil, false},
		{"azure 4TiB", 4 << 40, Options{Azure: true}, 4 << 40, nil, false},
		{"azure 32TiB+1", 32<<40 + 1, Options{Azure: true}, 0, ErrTooLarge, false},
		{"zero", 0, Options{}, 0, ErrInvalid, false},
		{"negative", -512, Options{}, 0, ErrInvalid, false},
		{"creator too long", 1 << 20, Options{CreatorApp: "vmfs2vhd"}, 0, ErrInvalid, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size := max(tt.size, 0)
			ext := []formats.Extent{}
			if size > 0 {
				ext = []formats.Extent{{Off: 0, Len: size, Kind: formats.Hole}}
			}
			l, err := Plan(tt.size, ext, tt.opts)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || l != nil {
					t.Fatalf("Plan = %v, %v; want error %v", l, err, tt.wantErr)
				}
				var e *Error
				if !errors.As(err, &e) || !strings.HasPrefix(err.Error(), "vhd: ") {
					t.Errorf("error %q is not a *vhd.Error", err)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Size != tt.wantSize || l.SourceSize != tt.size {
				t.Errorf("Size %d SourceSize %d, want %d", l.Size, l.SourceSize, tt.wantSize)
			}
			if (len(l.Notes) > 0) != tt.noted {
				t.Errorf("notes %q", l.Notes)
			}
			if tt.opts.Azure && (!l.Fixed || l.FileSize()%(1<<20) != 512) {
				t.Errorf("azure: fixed %v, file size %d", l.Fixed, l.FileSize())
			}
			checkPieces(t, l)
		})
	}
}

func TestPlanExtentErrors(t *testing.T) {
	tests := []struct {
		name string
		ext  []formats.Extent
	}{
		{"overlap", []formats.Extent{{Off: 0, Len: 4096, Kind: formats.Data}, {Off: 2048, Len: 4096, Kind: formats.Data}}},
		{"past end", []formats.Extent{{Off: 1 << 20, Len: 1, Kind: formats.Data}}},
		{"empty run", []formats.Extent{{Off: 0, Len: 0, Kind: formats.Data}}},
		{"bad kind", []formats.Extent{{Off: 0, Len: 512, Kind: 9}}},
		{"negative", []formats.Extent{{Off: -512, Len: 1024, Kind: formats.Data}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Plan(1<<20, tt.ext, testOpts)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestPlanCreator(t *testing.T) {
	tests := []struct {
		app  string
		want func(int64) Geometry
	}{
		{"", GeometryFor},
		{"qem2", GeometryFor},
		{"tap", GeometryFor},
		{"vpc ", func(int64) Geometry { return MaxGeometry }},
		{"v2v", func(int64) Geometry { return MaxGeometry }},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.app), func(t *testing.T) {
			const size = 100<<20 + 7*512
			l, err := Plan(size, nil, Options{CreatorApp: tt.app, UUID: testOpts.UUID, Time: testOpts.Time})
			if err != nil {
				t.Fatal(err)
			}
			if l.Geometry != tt.want(size) {
				t.Errorf("geometry %v", l.Geometry)
			}
		})
	}
}

func TestPlanDeterministic(t *testing.T) {
	ext := pattern("random", 100<<20, 64<<20)
	a := planBytes(t, 100<<20, ext, testOpts)
	b := planBytes(t, 100<<20, ext, testOpts)
	if !bytes.Equal(a, b) {
		t.Fatal("same input and options planned different files")
	}
	c := planBytes(t, 100<<20, ext, Options{})
	d := planBytes(t, 100<<20, ext, Options{})
	if bytes.Equal(c[68:84], d[68:84]) {
		t.Error("zero UUID option did not produce random UUIDs")
	}
}

// TestPlanHuge plans a 2000 GiB disk without I/O: its BAT is exact and its
// metadata small.
func TestPlanHuge(t *testing.T) {
	const size = 2000 << 30
	ext := pattern("alternating", size, 10<<20)
	l, err := Plan(size, ext, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, l)
	if got, want := len(l.bat), int(size/BlockSize*4); got != want {
		t.Errorf("BAT %d bytes, want %d", got, want)
	}
	if l.FileSize() > 1536+int64(len(l.bat))+int64(l.Blocks)*blockStride+4096 {
		t.Errorf("file size %d for %d blocks", l.FileSize(), l.Blocks)
	}
}
