package testimages

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"sort"
)

// Content model. Every byte the generator stores is a pure function of a
// seed and an absolute offset, so any range can be produced on demand (to
// write it, to hash it, to build a delta grain) without holding a disk in
// memory.

// randFill fills p with the pseudo-random bytes of stream seed at offset off:
// byte i of the stream is byte i%8 of splitmix64(seed ^ i/8·φ).
func randFill(p []byte, seed uint64, off int64) {
	for len(p) > 0 {
		w := uint64(off) / 8
		v := mix64(seed ^ (w * 0x9E3779B97F4A7C15))
		skip := int(off % 8)
		if skip == 0 && len(p) >= 8 {
			binary.LittleEndian.PutUint64(p, v)
			p, off = p[8:], off+8
			continue
		}
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		n := copy(p, b[skip:])
		p, off = p[n:], off+int64(n)
	}
}

func mix64(z uint64) uint64 {
	z += 0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// runKind is what a run of a layer holds.
type runKind uint8

const (
	runRandom   runKind = iota + 1 // stored pseudo-random data
	runZeroData                    // stored data that happens to be all zero
	runZeroed                      // seSparse zero grain (type 2): reads as zero, shadows the parent
	runUnmapped                    // seSparse unmapped grain (type 1): reads as zero, shadows the parent
)

// run is [off, off+len) of a layer.
type run struct {
	off, len int64
	kind     runKind
}

func (r run) end() int64 { return r.off + r.len }

// interval is a half-open byte range.
type interval struct{ off, end int64 }

// intervals is a sorted set of disjoint, non-adjacent intervals.
type intervals []interval

func normalize(iv intervals) intervals {
	slices.SortFunc(iv, func(a, b interval) int {
		switch {
		case a.off < b.off:
			return -1
		case a.off > b.off:
			return 1
		}
		return 0
	})
	var out intervals
	for _, x := range iv {
		if x.end <= x.off {
			continue
		}
		if n := len(out); n > 0 && x.off <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, x.end)
			continue
		}
		out = append(out, x)
	}
	return out
}

func (iv intervals) total() int64 {
	var n int64
	for _, x := range iv {
		n += x.end - x.off
	}
	return n
}

// minus returns iv without the bytes in sub (both normalized).
func (iv intervals) minus(sub intervals) intervals {
	var out intervals
	j := 0
	for _, x := range iv {
		cur := x.off
		for j < len(sub) && sub[j].end <= cur {
			j++
		}
		for k := j; k < len(sub) && sub[k].off < x.end; k++ {
			if sub[k].off > cur {
				out = append(out, interval{cur, sub[k].off})
			}
			cur = max(cur, sub[k].end)
		}
		if cur < x.end {
			out = append(out, interval{cur, x.end})
		}
	}
	return out
}

// scatter places runs over [0, size) so that about fill percent of the
// bytes are covered: the disk is cut into equal segments aligned to 64 KiB,
// one run of 64 KiB–4 MiB (sector-aligned) at a random place in each.
// Every seventh run holds stored zeros instead of random data. When zeroKinds
// is set (seSparse deltas) some runs become zero or unmapped grains, aligned
// to grain. A run of length L is placed so that it touches as few units of
// size within as it can (ceil(L/within)): on a base disk within is the VMFS
// file block, so the allocated share follows fill.
func scatter(size int64, fill float64, seed uint64, grain, within int64, zeroKinds bool) []run {
	if fill <= 0 || size <= 0 {
		return nil
	}
	if fill >= 100 {
		return []run{{0, size, runRandom}}
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x5DEECE66D))
	target := int64(float64(size) * fill / 100)
	if target < 512 {
		target = 512
	}
	const avg = 1 << 20
	k := max(1, target/avg)
	align := max(within, 64<<10)
	seg := (size / k) / align * align
	if seg < align {
		seg = align
		k = max(1, size/seg)
	}
	per := target / k
	var out []run
	for i := int64(0); i < k; i++ {
		base := i * seg
		segEnd := min(base+seg, size)
		if i == k-1 {
			segEnd = size
		}
		avail := segEnd - base
		// Length: per ±50 %, clamped to [64 KiB, 4 MiB] and to the segment.
		l := per/2 + rng.Int64N(per+1)
		l = min(max(l, 64<<10), 4<<20, avail)
		l &^= 511
		if l <= 0 {
			continue
		}
		// Whole units the run needs, then a unit-aligned place for them in
		// the segment, then a sector-aligned slack inside them.
		units := (l + within - 1) / within * within
		var start int64
		if units <= avail {
			start = base + rng.Int64N((avail-units)/within+1)*within + (rng.Int64N(units-l+1) &^ 511)
		} else {
			start = base + (rng.Int64N(avail-l+1) &^ 511)
		}
		kind := runRandom
		switch {
		case i%7 == 3:
			kind = runZeroData
		case zeroKinds && i%11 == 5:
			kind = runZeroed
		case zeroKinds && i%13 == 8:
			kind = runUnmapped
		}
		if kind == runZeroed || kind == runUnmapped {
			// Grain-aligned so that a zero grain never shares a grain with data.
			s := (start + grain - 1) / grain * grain
			e := (start + l) / grain * grain
			if e <= s {
				continue
			}
			start, l = s, e-s
		}
		out = append(out, run{start, l, kind})
	}
	return out
}

// runsIn returns the runs of rs (sorted, disjoint) that intersect [off, end).
func runsIn(rs []run, off, end int64) []run {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].end() > off })
	j := i
	for j < len(rs) && rs[j].off < end {
		j++
	}
	return rs[i:j]
}

// paint applies rs to p, which holds [off, off+len(p)) of a layer's view:
// random runs write their stream, every other kind clears.
func paint(p []byte, off int64, rs []run, seed uint64) {
	end := off + int64(len(p))
	for _, r := range runsIn(rs, off, end) {
		s, e := max(r.off, off), min(r.end(), end)
		q := p[s-off : e-off]
		if r.kind == runRandom {
			randFill(q, seed, s)
		} else {
			clear(q)
		}
	}
}

func sortInt64s(s []int64) { slices.Sort(s) }

// blockState is the VMFS allocation state of one file block.
type blockState uint8

const (
	blockHole blockState = iota // unallocated
	blockTBZ                    // allocated, to be zeroed: garbage on disk, reads as zero
	blockData                   // allocated and written
)
