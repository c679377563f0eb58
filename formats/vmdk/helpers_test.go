package vmdk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// memFile is an in-memory File (all Data).
type memFile struct{ b []byte }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m.b).ReadAt(p, off)
}
func (m *memFile) Size() int64  { return int64(len(m.b)) }
func (m *memFile) Close() error { return nil }
func (m *memFile) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= int64(len(m.b)) {
		return formats.Extent{}, formats.ErrOutOfRange
	}
	return formats.Extent{Off: off, Len: int64(len(m.b)) - off, Kind: formats.Data}, nil
}

// memFS is an in-memory FS.
type memFS map[string][]byte

func (m memFS) Open(name string) (File, error) {
	b, ok := m[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &memFile{b}, nil
}

// region is data written into a test image.
type region struct {
	off int64
	b   []byte
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32()) | 1 // never zero: every byte is visible
	}
	return b
}

// writeSparse writes a sparse file of size bytes holding regions.
func writeSparse(t testing.TB, p string, size int64, regs []region) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range regs {
		if _, err := f.WriteAt(r.b, r.off); err != nil {
			t.Fatal(err)
		}
	}
}

func writeFile(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// descText builds a VMware-style descriptor. extents are full extent lines.
func descText(cid, parentCID uint32, createType, parentHint string, extents []string, ddb ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%08x\nparentCID=%08x\nisNativeSnapshot=\"no\"\ncreateType=\"%s\"\n", cid, parentCID, createType)
	if parentHint != "" {
		fmt.Fprintf(&b, "parentFileNameHint=\"%s\"\n", parentHint)
	}
	b.WriteString("\n# Extent description\n")
	for _, e := range extents {
		b.WriteString(e + "\n")
	}
	b.WriteString("\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"13\"\nddb.adapterType = \"lsilogic\"\n")
	for _, d := range ddb {
		b.WriteString(d + "\n")
	}
	return b.String()
}

// grainData is the content of one grain of a delta: nil means "state only".
type grainSpec struct {
	kind     formats.Kind // Data, Zero (seSparse type 2), Hole
	b        []byte       // Data content, len = grain size
	unmapped bool         // seSparse type 1 instead of 2
}

// encodeCOWD builds a COWD (vmfsSparse) delta of capacity sectors with
// 512-byte grains from the layout in image-formats.md §2.2. Grains are
// stored in ascending guest order, so adjacent guest grains are adjacent in
// the file unless gap is set (then one free sector separates every grain).
func encodeCOWD(capacity int64, grains map[int64][]byte, gap bool) []byte {
	const gtEntries = 4096
	numGD := (capacity + gtEntries - 1) / gtEntries
	gdSectors := (numGD*4 + 511) / 512
	keys := slices.Sorted(mapsKeys(grains))
	var gts []int64 // GD indexes with a table, ascending
	for _, k := range keys {
		if g := k / gtEntries; len(gts) == 0 || gts[len(gts)-1] != g {
			gts = append(gts, g)
		}
	}
	gtStart := 4 + gdSectors
	gtSector := map[int64]int64{}
	for i, g := range gts {
		gtSector[g] = gtStart + int64(i)*32
	}
	next := gtStart + int64(len(gts))*32
	grainSector := map[int64]int64{}
	for _, k := range keys {
		grainSector[k] = next
		next++
		if gap {
			next++
		}
	}
	out := make([]byte, next*512)
	h := out[:2048]
	copy(h, "COWD")
	binary.LittleEndian.PutUint32(h[4:], 1)
	binary.LittleEndian.PutUint32(h[8:], 3)
	binary.LittleEndian.PutUint32(h[12:], uint32(capacity))
	binary.LittleEndian.PutUint32(h[16:], 1)
	binary.LittleEndian.PutUint32(h[20:], 4)
	binary.LittleEndian.PutUint32(h[24:], uint32(numGD))
	binary.LittleEndian.PutUint32(h[28:], uint32(next))
	for g, s := range gtSector {
		binary.LittleEndian.PutUint32(out[4*512+g*4:], uint32(s))
	}
	for _, k := range keys {
		gt := gtSector[k/gtEntries] * 512
		binary.LittleEndian.PutUint32(out[gt+(k%gtEntries)*4:], uint32(grainSector[k]))
		copy(out[grainSector[k]*512:], grains[k])
	}
	return out
}

func mapsKeys[V any](m map[int64]V) func(func(int64) bool) {
	return func(yield func(int64) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// encodeSESparse builds a seSparse delta of capacity sectors (4 KiB grains)
// from the layout in image-formats.md §2.3 and qemu's checks: constant
// header, volatile header, grain directory, grain tables used in reverse
// directory order, grains stored at indexes idxBase+i in reverse guest order
// (idxBase > 4095 exercises the rotated index encoding; the file is sparse).
func encodeSESparse(capacity int64, grains map[int64]grainSpec, idxBase int64) []byte {
	const gtEntries = 4096
	numGD := (capacity/8 + gtEntries - 1) / gtEntries
	gdSectors := max((numGD*8+511)/512, 1)
	keys := slices.Sorted(mapsKeys(grains))
	var gts []int64
	for _, k := range keys {
		if g := k / gtEntries; len(gts) == 0 || gts[len(gts)-1] != g {
			gts = append(gts, g)
		}
	}
	const gdOff = 8
	gtOff := gdOff + gdSectors
	gtsSectors := max(int64(len(gts)), 1) * 64
	grainsOff := gtOff + gtsSectors
	var data []int64
	for _, k := range keys {
		if grains[k].kind == formats.Data {
			data = append(data, k)
		}
	}
	slices.Reverse(data)
	idx := map[int64]int64{}
	for i, k := range data {
		idx[k] = idxBase + int64(i)
	}
	grainsCount := idxBase + int64(len(data))
	size := (grainsOff + grainsCount*8) * 512
	out := make([]byte, size)
	put := func(off int64, v uint64) { binary.LittleEndian.PutUint64(out[off:], v) }
	put(0, 0xcafebabe)
	put(8, 0x200000001)
	put(16, uint64(capacity))
	put(24, 8)
	put(32, 64)
	put(80, 1) // volatile header sector
	put(88, 1)
	put(96, 2) // journal header (unused by readers)
	put(104, 2)
	put(112, 4)
	put(120, 4)
	put(128, gdOff)
	put(136, uint64(gdSectors))
	put(144, uint64(gtOff))
	put(152, uint64(gtsSectors))
	put(192, uint64(grainsOff))
	put(200, uint64(grainsCount*8))
	put(512, 0xcafecafe)
	for i, g := range gts {
		tableNo := int64(len(gts) - 1 - i) // reverse allocation order
		put(gdOff*512+g*8, 0x10000000<<32|uint64(tableNo))
		for _, k := range keys {
			if k/gtEntries != g {
				continue
			}
			var e uint64
			gs := grains[k]
			switch gs.kind {
			case formats.Data:
				x := uint64(idx[k])
				e = 3<<60 | (x&0xfff)<<48 | x>>12
				copy(out[(grainsOff+idx[k]*8)*512:], gs.b)
			case formats.Zero:
				e = 2 << 60
				if gs.unmapped {
					e = 1 << 60
				}
			}
			put((gtOff+tableNo*64)*512+(k%gtEntries)*8, e)
		}
	}
	return out
}

// writeSparseBytes writes b to p as a sparse file (runs of zero 4 KiB
// blocks become holes).
func writeSparseBytes(t testing.TB, p string, b []byte) {
	t.Helper()
	var regs []region
	for off := 0; off < len(b); off += 4096 {
		end := min(off+4096, len(b))
		if !allZero(b[off:end]) {
			regs = append(regs, region{int64(off), b[off:end]})
		}
	}
	writeSparse(t, p, int64(len(b)), regs)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func lookPath(tool string) (string, error) { return exec.LookPath(tool) }
