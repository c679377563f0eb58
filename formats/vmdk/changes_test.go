package vmdk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// TestChangedSince: on the base+COWD+seSparse+COWD chain, the changes
// since every point are exactly the union of what the layers above it
// define (worked out sector by sector through LayerExtent), carry the kind
// the leaf has there, and everything outside them reads the same at the
// point and at the leaf.
func TestChangedSince(t *testing.T) {
	dir := t.TempDir()
	names := vmfsChain(t, dir)
	leaf := openT(t, dir, names[3], Options{})
	size := leaf.Size()
	const sec = 512

	// What each layer defines, per sector, from LayerExtent.
	defined := make([][]formats.Kind, leaf.Depth())
	for i := range defined {
		defined[i] = make([]formats.Kind, size/sec)
		for off := int64(0); off < size; {
			e, err := leaf.LayerExtent(i, off)
			if err != nil {
				t.Fatalf("layer %d at %d: %v", i, off, err)
			}
			if e.Off != off || e.Len <= 0 || e.Len%sec != 0 {
				t.Fatalf("layer %d at %d: run %+v", i, off, e)
			}
			for s := off / sec; s < e.End()/sec; s++ {
				defined[i][s] = e.Kind
			}
			off = e.End()
		}
	}
	// Spot checks against the chain's recipe (vmfsChain).
	if defined[0][150] != formats.Data || defined[0][149] != formats.Hole || defined[0][9000*8+3] != formats.Data {
		t.Errorf("top COWD layer: sector 150 %v, 149 %v, %d %v", defined[0][150], defined[0][149], 9000*8+3, defined[0][9000*8+3])
	}
	if defined[1][0] != formats.Zero || defined[1][20*8] != formats.Zero || defined[1][30*8] != formats.Data || defined[1][40*8] != formats.Hole {
		t.Errorf("seSparse layer: %v %v %v %v", defined[1][0], defined[1][20*8], defined[1][30*8], defined[1][40*8])
	}
	if defined[3][0] != formats.Data || defined[3][5<<20/sec] != formats.Hole {
		t.Errorf("base: %v %v", defined[3][0], defined[3][5<<20/sec])
	}

	for point := 0; point < leaf.Depth(); point++ {
		t.Run(filepath.Base(names[3-point]), func(t *testing.T) {
			ch, err := leaf.ChangedSince(point)
			if err != nil {
				t.Fatal(err)
			}
			if err := formats.CheckExtents(size, ch); err != nil {
				t.Fatalf("changes %v: %v", ch, err)
			}
			if point == 0 && len(ch) != 0 {
				t.Fatalf("changes since the leaf itself: %v", ch)
			}
			// Expected, sector by sector: the topmost defining layer above
			// the point.
			want := make([]formats.Kind, size/sec) // Hole = unchanged
			for s := range want {
				for i := 0; i < point; i++ {
					if k := defined[i][s]; k != formats.Hole {
						want[s] = k
						break
					}
				}
			}
			got := make([]formats.Kind, size/sec)
			for i, e := range ch {
				if e.Kind == formats.Hole {
					t.Fatalf("change %d is a hole: %+v", i, e)
				}
				if i > 0 && ch[i-1].End() == e.Off && ch[i-1].Kind == e.Kind {
					t.Errorf("changes %d and %d not merged: %+v %+v", i-1, i, ch[i-1], e)
				}
				for s := e.Off / sec; s < e.End()/sec; s++ {
					got[s] = e.Kind
				}
			}
			if !reflect.DeepEqual(got, want) {
				for s := range got {
					if got[s] != want[s] {
						t.Fatalf("sector %d: change %v, want %v", s, got[s], want[s])
					}
				}
			}
			// Unchanged ranges read the same at the point and at the leaf;
			// changed ones read as the leaf says (zeros for Zero).
			old, err := leaf.View(point)
			if err != nil {
				t.Fatal(err)
			}
			a, b := make([]byte, size), make([]byte, size)
			if _, err := old.ReadAt(a, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := leaf.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			for _, e := range ch {
				if e.Kind == formats.Zero && !allZero(b[e.Off:e.End()]) {
					t.Errorf("zero change %+v reads non-zero at the leaf", e)
				}
				copy(a[e.Off:e.End()], b[e.Off:e.End()])
			}
			if !bytes.Equal(a, b) {
				t.Errorf("the point with its changes applied differs from the leaf")
			}
			if point == 1 {
				wantTop := []formats.Extent{{Off: 150 * sec, Len: 14 * sec, Kind: formats.Data}, {Off: (9000*8 + 3) * sec, Len: sec, Kind: formats.Data}}
				if !reflect.DeepEqual(ch, wantTop) {
					t.Errorf("changes of the top COWD layer: %v, want %v", ch, wantTop)
				}
			}
		})
	}

	if _, err := leaf.ChangedSince(leaf.Depth()); !errors.Is(err, formats.ErrOutOfRange) {
		t.Errorf("point past the base: %v", err)
	}
	if _, err := leaf.LayerExtent(-1, 0); !errors.Is(err, formats.ErrOutOfRange) {
		t.Errorf("layer -1: %v", err)
	}
	if _, err := leaf.LayerExtent(0, size); !errors.Is(err, formats.ErrOutOfRange) {
		t.Errorf("offset at the end: %v", err)
	}
}

// TestLayerFileSize: a layer's size is that of its extent files.
func TestLayerFileSize(t *testing.T) {
	dir := t.TempDir()
	names := vmfsChain(t, dir)
	leaf := openT(t, dir, names[3], Options{})
	exts := []string{"-000003-delta.vmdk", "-000002-sesparse.vmdk", "-000001-delta.vmdk", "-flat.vmdk"}
	for i, suffix := range exts {
		st, err := os.Stat(filepath.Join(dir, strings.TrimSuffix(names[0], ".vmdk")+suffix))
		if err != nil {
			t.Fatal(err)
		}
		got, err := leaf.LayerFileSize(i)
		if err != nil || got != st.Size() {
			t.Errorf("layer %d: %d, %v; the file has %d bytes", i, got, err, st.Size())
		}
	}
	if _, err := leaf.LayerFileSize(4); !errors.Is(err, formats.ErrOutOfRange) {
		t.Errorf("layer 4: %v", err)
	}
}
