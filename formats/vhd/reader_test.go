package vhd

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// TestOpenPlatformMade reads the VHDs written by Microsoft products.
func TestOpenPlatformMade(t *testing.T) {
	tests := []struct {
		file      string
		size      int64
		chsSize   int64 // what Virtual PC (and qemu for "vpc ") report
		app       string
		blocks    int
		allocated int
	}{
		{"hyperv2012r2-dynamic.vhd", 136365211648, 136363130880, "win ", 65024, 0},
		// Virtual PC: we report the current size like Hyper-V and libvhdi;
		// qemu 7.2 reports the C·H·S size 136,363,130,880.
		{"virtualpc-dynamic.vhd", 136365211648, 136363130880, "vpc ", 65024, 0},
		{"d2v-zerofilled.vhd", 263454720, 65535 * 16 * 255 * 512, "d2v\x00", 126, 126},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b := sample(t, tt.file)
			img, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			in := img.Info()
			if img.Size() != tt.size || in.Geometry.Size() != tt.chsSize || in.CreatorApp != tt.app ||
				!in.Dynamic || in.BlockCount != tt.blocks || in.Allocated != tt.allocated || in.BlockSize != BlockSize {
				t.Errorf("size %d, info %+v", img.Size(), in)
			}
			ext, err := formats.Extents(img)
			if err != nil {
				t.Fatal(err)
			}
			if tt.allocated == 0 {
				if len(ext) != 1 || ext[0].Kind != formats.Hole {
					t.Errorf("extents of an empty disk: %v", ext)
				}
				return
			}
			// Disk2vhd allocated every block and filled it with zeros.
			if len(ext) != 1 || ext[0].Kind != formats.Data || ext[0].Len != tt.size {
				t.Errorf("extents %v", ext)
			}
			buf := make([]byte, 4<<20)
			for off := int64(0); off < img.Size(); off += int64(len(buf)) {
				n, err := img.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					t.Fatal(err)
				}
				if !formats.IsZero(buf[:n]) {
					t.Fatalf("non-zero data near %d", off)
				}
			}
		})
	}
}

func TestOpenRefuses(t *testing.T) {
	good := planBytes(t, 5<<20, []formats.Extent{{Off: 0, Len: 5 << 20, Kind: formats.Data}}, testOpts)
	fixed := planBytes(t, 1<<20, []formats.Extent{{Off: 0, Len: 1 << 20, Kind: formats.Data}}, Options{Fixed: true, UUID: testOpts.UUID, Time: testOpts.Time})
	end := len(good) - FooterSize
	// mutate returns a copy of b changed by fn; fix re-checksums the
	// footers (both copies) and the header.
	mutate := func(b []byte, fix bool, fn func([]byte)) []byte {
		c := bytes.Clone(b)
		fn(c)
		if fix {
			for _, at := range []int{0, len(c) - FooterSize} {
				be.PutUint32(c[at+footerChecksumOff:], checksum(c[at:at+FooterSize], footerChecksumOff))
			}
			be.PutUint32(c[512+headerChecksumOff:], checksum(c[512:512+HeaderSize], headerChecksumOff))
		}
		return c
	}
	tests := []struct {
		name string
		b    []byte
		want error
		msg  string // substring of the error
	}{
		{"afl5 fuzzed", sample(t, "afl5.img"), ErrCorrupt, ""},
		{"empty file", nil, ErrCorrupt, "too small"},
		{"not a VHD", make([]byte, 4096), ErrCorrupt, "cookie"},
		{"footer checksum", mutate(good, false, func(b []byte) { b[end+50]++ }), ErrCorrupt, "checksum"},
		{"header checksum", mutate(good, false, func(b []byte) { b[512+40]++ }), ErrCorrupt, "dynamic header at 0x224: checksum"},
		{"header cookie", mutate(good, true, func(b []byte) { b[512] = 'x' }), ErrCorrupt, "cookie"},
		{"differencing", mutate(good, true, func(b []byte) {
			be.PutUint32(b[60:], typeDifferencing)
			be.PutUint32(b[end+60:], typeDifferencing)
		}), ErrUnsupported, "differencing"},
		{"disk type", mutate(good, true, func(b []byte) { be.PutUint32(b[end+60:], 7) }), ErrCorrupt, "disk type"},
		{"BAT entry past EOF", mutate(good, true, func(b []byte) { be.PutUint32(b[1536+4:], 0x00100000) }), ErrCorrupt, "BAT at 0x604: entry 1"},
		{"BAT past EOF", mutate(good, true, func(b []byte) { be.PutUint64(b[512+16:], uint64(len(good))) }), ErrCorrupt, "table offset"},
		{"too many entries", mutate(good, true, func(b []byte) { be.PutUint32(b[512+28:], 0x40000001) }), ErrCorrupt, "table offset"},
		{"too few entries", mutate(good, true, func(b []byte) { be.PutUint32(b[512+28:], 2) }), ErrCorrupt, "max table entries"},
		{"block size", mutate(good, true, func(b []byte) { be.PutUint32(b[512+32:], 3000) }), ErrCorrupt, "block size"},
		{"header past EOF", mutate(good, true, func(b []byte) {
			be.PutUint64(b[16:], uint64(len(good)))
			be.PutUint64(b[end+16:], uint64(len(good)))
		}), ErrCorrupt, "data offset"},
		{"truncated dynamic", good[:len(good)-3*FooterSize], ErrCorrupt, "entry 2"},
		{"fixed size past data", mutate(fixed, true, func(b []byte) { be.PutUint64(b[len(b)-FooterSize+48:], 2<<20) }), ErrCorrupt, "current size"},
		{"fixed truncated", fixed[1024:], ErrCorrupt, "current size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := Open(bytes.NewReader(tt.b), int64(len(tt.b)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open = %v, %v; want %v", img, err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q: want a *vhd.Error containing %q", err, tt.msg)
			}
			t.Log(err)
		})
	}
}

// TestOpenFooterFallbacks reads a dynamic disk without its end footer (qemu
// uses the copy at 0) and a fixed disk with a 511-byte footer.
func TestOpenFooterFallbacks(t *testing.T) {
	ext := []formats.Extent{{Off: 0, Len: 3 << 20, Kind: formats.Data}}
	dyn := planBytes(t, 3<<20, ext, testOpts)
	fixed := planBytes(t, 3<<20, ext, Options{Fixed: true, UUID: testOpts.UUID, Time: testOpts.Time})
	tests := []struct {
		name string
		b    []byte
	}{
		{"dynamic footer zeroed", append(bytes.Clone(dyn[:len(dyn)-FooterSize]), make([]byte, FooterSize)...)},
		{"fixed 511-byte footer", fixed[:len(fixed)-1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := Open(bytes.NewReader(tt.b), int64(len(tt.b)))
			if err != nil {
				t.Fatal(err)
			}
			checkContent(t, img, &synth{size: 3 << 20, ext: ext})
		})
	}
}

// checkContent compares every byte of img with want.
func checkContent(t *testing.T, img formats.Image, want formats.Image) {
	t.Helper()
	if img.Size() != want.Size() {
		t.Fatalf("size %d, want %d", img.Size(), want.Size())
	}
	a, b := make([]byte, 1<<20+512), make([]byte, 1<<20+512)
	for off := int64(0); off < img.Size(); off += int64(len(a)) {
		n, err := img.ReadAt(a, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		m, _ := want.ReadAt(b, off)
		if n != m || !bytes.Equal(a[:n], b[:m]) {
			t.Fatalf("content differs in [%d, +%d)", off, len(a))
		}
	}
}

// TestReadPlanned reads back planned VHDs, compares contents and extents,
// and runs iotest on the reader.
func TestReadPlanned(t *testing.T) {
	const size = 5<<20 + 3*SectorSize
	for _, fixed := range []bool{false, true} {
		for _, pat := range []string{"empty", "full", "alternating", "random"} {
			name := pat + map[bool]string{false: "/dynamic", true: "/fixed"}[fixed]
			t.Run(name, func(t *testing.T) {
				ext := pattern(pat, size, 64<<20)
				src := &synth{size: size, ext: ext}
				b := planBytes(t, size, ext, Options{Fixed: fixed, UUID: testOpts.UUID, Time: testOpts.Time})
				img, err := Open(bytes.NewReader(b), int64(len(b)))
				if err != nil {
					t.Fatal(err)
				}
				checkContent(t, img, src)
				// Every Data byte of the source is Data in the VHD.
				err = formats.Walk(src, 0, size, func(e formats.Extent) error {
					if e.Kind != formats.Data {
						return nil
					}
					return formats.Walk(img, e.Off, e.Len, func(f formats.Extent) error {
						if f.Kind != formats.Data {
							t.Errorf("source data %v is %v in the VHD", e, f)
						}
						return nil
					})
				})
				if err != nil {
					t.Fatal(err)
				}
				want := make([]byte, size)
				src.ReadAt(want, 0)
				if err := iotest.TestReader(io.NewSectionReader(img, 0, size), want); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

// TestReadBitmap checks that sectors whose bitmap bit is clear read as zeros
// and are reported as holes.
func TestReadBitmap(t *testing.T) {
	ext := []formats.Extent{{Off: 0, Len: 2 << 20, Kind: formats.Data}}
	b := planBytes(t, 2<<20, ext, testOpts)
	bm := 4096 - bitmapSize
	b[bm+1] = 0x0F // sectors 8..11 absent
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := formats.Extents(img)
	if err != nil {
		t.Fatal(err)
	}
	want := []formats.Extent{{Off: 0, Len: 8 * 512, Kind: formats.Data}, {Off: 8 * 512, Len: 4 * 512, Kind: formats.Hole}, {Off: 12 * 512, Len: 2<<20 - 12*512, Kind: formats.Data}}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("extents %v, want %v", got, want)
	}
	p := make([]byte, 16*512)
	if _, err := img.ReadAt(p, 100); err != nil {
		t.Fatal(err)
	}
	src := make([]byte, 16*512)
	fill(src, 100)
	clear(src[8*512-100 : 12*512-100])
	if !bytes.Equal(p, src) {
		t.Error("absent sectors do not read as zeros")
	}
}

// TestConcurrentReadAt reads one dynamic image from several goroutines (run
// with -race).
func TestConcurrentReadAt(t *testing.T) {
	const size = 6<<20 + 512
	ext := pattern("random", size, 64<<20)
	src := &synth{size: size, ext: ext}
	b := planBytes(t, size, ext, testOpts)
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			p, q := make([]byte, 70000), make([]byte, 70000)
			for i := range 50 {
				off := int64((g*50+i)*104729) % (size - int64(len(p)))
				if _, err := img.ReadAt(p, off); err != nil {
					errs <- err
					return
				}
				src.ReadAt(q, off)
				if !bytes.Equal(p, q) {
					errs <- errors.New("concurrent read differs")
					return
				}
				if _, err := img.Extent(off); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
