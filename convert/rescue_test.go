package convert

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// badImage is a formats.Image over pattern whose map fails in mapFail.
type badImage struct {
	*pattern
	mapFail []formats.Extent
}

func (b badImage) Size() int64 { return b.size }
func (b badImage) Extent(off int64) (formats.Extent, error) {
	for _, f := range b.mapFail {
		if off >= f.Off && off < f.End() {
			return formats.Extent{}, errors.New("corrupt pointer block")
		}
	}
	end := b.size
	for _, f := range b.mapFail {
		if f.Off > off {
			end = min(end, f.Off)
		}
	}
	return formats.Extent{Off: off, Len: end - off, Kind: formats.Data}, nil
}

// Rescue mode recovers every readable sector and reports exactly the
// unreadable ones, in both output modes.
func TestRescue(t *testing.T) {
	const size = 12 << 20
	fail := []formats.Extent{
		{Off: 3<<20 + 700, Len: 1},    // one sector: [3 MiB+512, +512)
		{Off: 5 << 20, Len: 64 << 10}, // 64 KiB
		{Off: 9<<20 - 100, Len: 200},  // across a chunk boundary: two sectors
		{Off: size - 512, Len: 512},   // the last sector
	}
	want := []BadRange{
		{Off: 3<<20 + 512, Len: 512}, {Off: 5 << 20, Len: 64 << 10},
		{Off: 9<<20 - 512, Len: 1024}, {Off: size - 512, Len: 512},
	}
	src := &pattern{size: size, fail: fail}
	good := &pattern{size: size}
	l := rawLayout{size: size, pieces: []formats.Piece{{Off: 0, Len: size, Src: 0}}}
	expect := expected(t, l, good)
	for _, w := range want {
		clear(expect[w.Off : w.Off+w.Len])
	}
	for _, mode := range []string{"write", "stream"} {
		t.Run(mode, func(t *testing.T) {
			var bad BadRanges
			opts := Options{Rescue: true, BadRange: bad.Add, ChunkSize: 1 << 20, Jobs: 3}
			var got []byte
			if mode == "write" {
				f, _ := os.Create(filepath.Join(t.TempDir(), "o"))
				defer f.Close()
				if _, err := Write(context.Background(), f, l, src, opts); err != nil {
					t.Fatal(err)
				}
				f.Truncate(size)
				got, _ = os.ReadFile(f.Name())
			} else {
				var buf bytes.Buffer
				if _, err := Stream(context.Background(), &buf, l, src, opts); err != nil {
					t.Fatal(err)
				}
				got = buf.Bytes()
			}
			if !bytes.Equal(got, expect) {
				t.Error("output differs: readable sectors lost or bad ones not zeroed")
			}
			list := bad.List()
			for i := range list {
				list[i].Error = ""
			}
			if !slices.Equal(list, want) {
				t.Errorf("bad ranges %v, want %v", list, want)
			}
		})
	}
	// Without rescue the first error stops the copy.
	if _, err := Stream(context.Background(), &bytes.Buffer{}, l, src, Options{}); err == nil {
		t.Error("without --rescue a read error must fail the conversion")
	}
}

func TestRescueExtents(t *testing.T) {
	img := badImage{pattern: &pattern{size: 4 << 20}, mapFail: []formats.Extent{{Off: 1<<20 + 4096, Len: 10}}}
	var warned []formats.Extent
	got := RescueExtents(img, func(off, n int64, err error) { warned = append(warned, formats.Extent{Off: off, Len: n}) })
	if len(got) != 1 || got[0] != (formats.Extent{Off: 0, Len: 4 << 20, Kind: formats.Data}) {
		t.Errorf("extents %v", got)
	}
	if len(warned) != 1 || warned[0] != (formats.Extent{Off: 1<<20 + 4096, Len: 1<<20 - 4096}) {
		t.Errorf("warnings %v", warned)
	}
}
