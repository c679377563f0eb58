package vhd

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// synth is a synthetic formats.Image: Data runs hold bytes that depend only
// on their offset; Zero and Hole runs read as zeros. It costs no memory
// whatever its size.
type synth struct {
	size int64
	ext  []formats.Extent // covering [0, size) in order
}

func (s *synth) Size() int64 { return s.size }

func (s *synth) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= s.size {
		return formats.Extent{}, formats.ErrOutOfRange
	}
	i := sort.Search(len(s.ext), func(i int) bool { return s.ext[i].End() > off })
	e := s.ext[i]
	return formats.Extent{Off: off, Len: e.End() - off, Kind: e.Kind}, nil
}

func (s *synth) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, os.ErrInvalid
	}
	if off >= s.size {
		return 0, io.EOF
	}
	n := len(p)
	var err error
	if int64(n) > s.size-off {
		n, err = int(s.size-off), io.EOF
	}
	for done := 0; done < n; {
		e, _ := s.Extent(off + int64(done))
		k := int(min(int64(n-done), e.Len))
		if e.Kind == formats.Data {
			fill(p[done:done+k], off+int64(done))
		} else {
			clear(p[done : done+k])
		}
		done += k
	}
	return n, err
}

// fill writes the synthetic data of [off, off+len(p)): each 8-byte word is
// a hash of its index, never all zero.
func fill(p []byte, off int64) {
	var w [8]byte
	for len(p) > 0 {
		idx := uint64(off / 8)
		binary.LittleEndian.PutUint64(w[:], mix(idx))
		k := copy(p, w[off%8:])
		p = p[k:]
		off += int64(k)
	}
}

func mix(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ x>>30) * 0xBF58476D1CE4E5B9
	x = (x ^ x>>27) * 0x94D049BB133111EB
	return x ^ x>>31 | 1
}

// pattern returns an extent list of one of the test allocation patterns over
// [0, size), holding at most maxData bytes of Data.
func pattern(name string, size, maxData int64) []formats.Extent {
	var ext []formats.Extent
	add := func(off, n int64, k formats.Kind) {
		if n <= 0 {
			return
		}
		if l := len(ext); l > 0 && ext[l-1].Kind == k && ext[l-1].End() == off {
			ext[l-1].Len += n
			return
		}
		ext = append(ext, formats.Extent{Off: off, Len: n, Kind: k})
	}
	switch name {
	case "empty":
		add(0, size, formats.Hole)
	case "full":
		if size <= maxData {
			add(0, size, formats.Data)
			break
		}
		h := maxData / 2 / SectorSize * SectorSize
		add(0, h, formats.Data)
		add(h, size-2*h, formats.Hole)
		add(size-h, h, formats.Data)
	case "alternating":
		const chunk = 384 << 10 // not a divisor of 2 MiB: runs straddle blocks
		count := max(1, min(size/(2*chunk), maxData/chunk))
		period := size / count / SectorSize * SectorSize
		pos := int64(0)
		for i := int64(0); i < count; i++ {
			n := min(int64(chunk), size-pos)
			add(pos, n, formats.Data)
			gap := formats.Hole
			if i%2 == 1 {
				gap = formats.Zero
			}
			next := min(pos+period, size)
			if i == count-1 {
				next = size
			}
			add(pos+n, next-pos-n, gap)
			pos = next
		}
	case "random":
		rng := rand.New(rand.NewPCG(uint64(size), 7))
		sectors := size / SectorSize
		cuts := map[int64]bool{0: true}
		for range 64 {
			cuts[rng.Int64N(sectors)*SectorSize] = true
		}
		var offs []int64
		for c := range cuts {
			offs = append(offs, c)
		}
		sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
		offs = append(offs, size)
		budget := maxData / 64 / SectorSize * SectorSize
		for i := 0; i+1 < len(offs); i++ {
			k := formats.Kind(1 + rng.IntN(3))
			n := offs[i+1] - offs[i]
			if k == formats.Data && n > budget {
				add(offs[i], budget, formats.Data)
				add(offs[i]+budget, n-budget, formats.Hole)
				continue
			}
			add(offs[i], n, k)
		}
	default:
		panic("unknown pattern " + name)
	}
	return ext
}

func dataBytes(ext []formats.Extent) (n int64) {
	for _, e := range ext {
		if e.Kind == formats.Data {
			n += e.Len
		}
	}
	return n
}

// testOpts are deterministic options.
var testOpts = Options{
	UUID: [16]byte{0x6f, 0x1e, 0x2a, 0x3b, 0x4c, 0x5d, 0x4e, 0x7f, 0x80, 0x91, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6, 0xf7},
	Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
}

// sample returns an uncompressed sample image from testdata.
func sample(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name+".bz2"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(bzip2.NewReader(f))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

// planBytes plans and streams a small VHD into memory.
func planBytes(t testing.TB, size int64, ext []formats.Extent, opts Options) []byte {
	t.Helper()
	l, err := Plan(size, ext, opts)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := formats.StreamLayout(&buf, l, &synth{size: size, ext: ext}, 1<<20); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
