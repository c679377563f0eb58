package qcow2

import (
	"encoding/binary"
	"iter"
	"sort"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Defaults and values of Options.
const (
	DefaultClusterSize = 64 << 10
	CompatV3           = "1.1"  // version 3, qemu's default since 1.7
	CompatV2           = "0.10" // version 2, for RHEL 6-era consumers
)

// Options controls Plan. The zero value asks for the defaults.
type Options struct {
	// ClusterSize is a power of two from 512 bytes to 2 MiB; 0 means 64 KiB.
	ClusterSize int64
	// Compat is "1.1" (version 3, the default when empty) or "0.10"
	// (version 2, which has no zero clusters).
	Compat string
	// ZeroClusters writes the disk's Zero extents as v3 zero-flag clusters.
	// By default they are left unallocated like holes: an image without a
	// backing file reads both as zeros, and flagging a large lazy-zeroed
	// disk costs an L2 table per 512 MiB (256 MiB of tables for 2 TiB), as
	// qemu-img convert also avoids. Ignored for v2.
	ZeroClusters bool
}

func (o Options) withDefaults() (Options, uint32, error) {
	if o.ClusterSize == 0 {
		o.ClusterSize = DefaultClusterSize
	}
	if o.Compat == "" {
		o.Compat = CompatV3
	}
	bits := uint32(0)
	for int64(1)<<bits < o.ClusterSize {
		bits++
	}
	if int64(1)<<bits != o.ClusterSize || bits < minClusterBits || bits > maxClusterBits {
		return o, 0, errf(ErrInvalid, "options", "ClusterSize", -1, "%d is not a power of two from 512 bytes to 2 MiB", o.ClusterSize)
	}
	if o.Compat != CompatV3 && o.Compat != CompatV2 {
		return o, 0, errf(ErrInvalid, "options", "Compat", -1, "%q, want %q or %q", o.Compat, CompatV3, CompatV2)
	}
	return o, bits, nil
}

// run is a run of guest clusters [start, end) of one kind: data clusters
// (stored contiguously from the base-th data cluster on) or zero-flag
// clusters.
type run struct {
	start, end, base int64
	zero             bool
}

// l2Run is a run of L1 indices [start, end) that have L2 tables, stored
// contiguously from the base-th L2 table on.
type l2Run struct{ start, end, base int64 }

// plan is the Layout of one qcow2 image.
type plan struct {
	hdr                    []byte
	cs                     int64 // cluster size
	l2Entries              int64 // entries per L2 table = cs/8
	rcPerBlock             int64 // refcounts per block = cs/2
	clusters               int64 // guest clusters
	l1Entries              int64
	rtClusters, rbClusters int64
	l1Clusters             int64
	l2Tables, dataClusters int64
	total                  int64 // clusters in the file
	rtOff, rbOff, l1Off    int64
	l2Off, dataOff         int64
	runs                   []run
	l2                     []l2Run
	data                   []formats.Extent
}

// Plan lays out a qcow2 image of virtual size size whose contents are
// described by extents: sorted, non-overlapping runs within [0, size) (gaps
// count as holes).
func Plan(size int64, extents []formats.Extent, opts Options) (formats.Layout, error) {
	o, bits, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if size <= 0 || size%512 != 0 {
		return nil, errf(ErrInvalid, "options", "size", -1, "virtual size %d is not a positive multiple of 512", size)
	}
	if err := checkExtents(size, extents); err != nil {
		return nil, err
	}
	v3 := o.Compat == CompatV3
	cs := o.ClusterSize
	p := &plan{cs: cs, l2Entries: cs / 8, rcPerBlock: cs / 2}
	p.clusters = (size + cs - 1) / cs
	p.l1Entries = (p.clusters + p.l2Entries - 1) / p.l2Entries
	if p.l1Entries*8 > maxL1Bytes {
		return nil, errf(ErrInvalid, "options", "ClusterSize", -1, "a %d-byte disk needs a %d-byte L1 table with %d-byte clusters; qemu accepts at most %d", size, p.l1Entries*8, cs, maxL1Bytes)
	}
	p.l1Clusters = (p.l1Entries*8 + cs - 1) / cs

	// Classify clusters: data beats zero beats hole.
	for _, e := range extents {
		if e.Kind == formats.Data {
			p.data = append(p.data, e)
		}
		if e.Kind == formats.Hole || (e.Kind == formats.Zero && !(v3 && o.ZeroClusters)) {
			continue
		}
		p.add(e.Off/cs, (e.End()-1)/cs+1, e.Kind == formats.Zero)
	}
	for _, r := range p.runs {
		first, last := r.start/p.l2Entries, (r.end-1)/p.l2Entries
		if n := len(p.l2); n > 0 && p.l2[n-1].end > first {
			first = p.l2[n-1].end
		}
		if first > last {
			continue
		}
		if n := len(p.l2); n > 0 && p.l2[n-1].end == first {
			p.l2[n-1].end = last + 1
		} else {
			p.l2 = append(p.l2, l2Run{start: first, end: last + 1, base: p.l2Tables})
		}
		p.l2Tables += last + 1 - first
	}

	// Refcount fixed point.
	fixed := 1 + p.l1Clusters + p.l2Tables + p.dataClusters
	for {
		rb := (fixed + p.rtClusters + p.rbClusters + p.rcPerBlock - 1) / p.rcPerBlock
		rt := (rb*8 + cs - 1) / cs
		if rb == p.rbClusters && rt == p.rtClusters {
			break
		}
		p.rbClusters, p.rtClusters = rb, rt
	}
	if p.rtClusters*cs > maxRefTableBytes {
		return nil, errf(ErrInvalid, "options", "ClusterSize", -1, "refcount table of %d bytes exceeds qemu's %d", p.rtClusters*cs, maxRefTableBytes)
	}
	p.total = fixed + p.rtClusters + p.rbClusters
	p.rtOff = cs
	p.rbOff = p.rtOff + p.rtClusters*cs
	p.l1Off = p.rbOff + p.rbClusters*cs
	p.l2Off = p.l1Off + p.l1Clusters*cs
	p.dataOff = p.l2Off + p.l2Tables*cs

	h := header{
		Version:          3,
		ClusterBits:      bits,
		Size:             uint64(size),
		L1Size:           uint32(p.l1Entries),
		L1Offset:         uint64(p.l1Off),
		RefcountOffset:   uint64(p.rtOff),
		RefcountClusters: uint32(p.rtClusters),
		RefcountOrder:    refcountOrder16,
	}
	if !v3 {
		h.Version = 2
	}
	p.hdr = h.marshal()
	return p, nil
}

// add appends the clusters [first, end) of one kind to the run list; the
// first cluster may be the last of the previous run, and then data wins.
func (p *plan) add(first, end int64, zero bool) {
	if n := len(p.runs); n > 0 && p.runs[n-1].end > first {
		last := &p.runs[n-1]
		switch {
		case last.zero && !zero: // data takes the shared cluster
			last.end--
			if last.end == last.start {
				p.runs = p.runs[:n-1]
			}
		default:
			first++
		}
	}
	if first >= end {
		return
	}
	if n := len(p.runs); n > 0 && p.runs[n-1].end == first && p.runs[n-1].zero == zero {
		p.runs[n-1].end = end
	} else {
		p.runs = append(p.runs, run{start: first, end: end, base: p.dataClusters, zero: zero})
	}
	if !zero {
		p.dataClusters += end - first
	}
}

// checkExtents verifies the extent list (formats.CheckExtents).
func checkExtents(size int64, extents []formats.Extent) error {
	if err := formats.CheckExtents(size, extents); err != nil {
		return errf(ErrInvalid, "extent list", "", -1, "%v", err)
	}
	return nil
}

func (p *plan) FileSize() int64 { return p.total * p.cs }

// metaChunk bounds the size of one metadata piece.
const metaChunk = 1 << 20

// Pieces yields the header, refcount table, refcount blocks, L1 table and
// L2 tables — all computed on the fly, so a plan costs memory in proportion
// to its extent list only — then one data piece per Data extent.
func (p *plan) Pieces() iter.Seq[formats.Piece] {
	return func(yield func(formats.Piece) bool) {
		be := binary.BigEndian
		if !yield(formats.Piece{Off: 0, Len: int64(len(p.hdr)), Meta: p.hdr}) {
			return
		}
		// Refcount table: entry k points at refcount block k.
		if !chunks(yield, p.rtOff, p.rbClusters*8, func(b []byte, first int64) {
			for i := range int64(len(b) / 8) {
				be.PutUint64(b[i*8:], uint64(p.rbOff+(first/8+i)*p.cs))
			}
		}) {
			return
		}
		// Refcount blocks: clusters [0, total) have refcount 1. Full
		// blocks share one buffer.
		var full []byte
		for k := range p.rbClusters {
			n := min(p.rcPerBlock, p.total-k*p.rcPerBlock) // counted clusters in this block
			var b []byte
			if n == p.rcPerBlock && full != nil {
				b = full
			} else {
				b = make([]byte, n*2)
				for i := range n {
					be.PutUint16(b[i*2:], 1)
				}
				if n == p.rcPerBlock {
					full = b
				}
			}
			if !yield(formats.Piece{Off: p.rbOff + k*p.cs, Len: int64(len(b)), Meta: b}) {
				return
			}
		}
		// L1 table.
		if !chunks(yield, p.l1Off, p.l1Entries*8, func(b []byte, first int64) {
			lo, hi := first/8, first/8+int64(len(b)/8)
			ri := sort.Search(len(p.l2), func(i int) bool { return p.l2[i].end > lo })
			for ; ri < len(p.l2) && p.l2[ri].start < hi; ri++ {
				r := p.l2[ri]
				for i := max(lo, r.start); i < min(hi, r.end); i++ {
					be.PutUint64(b[(i-lo)*8:], uint64(p.l2Off+(r.base+i-r.start)*p.cs)|flagCopied)
				}
			}
		}) {
			return
		}
		// L2 tables, in L1 order.
		for _, r := range p.l2 {
			for i := r.start; i < r.end; i++ {
				b := p.l2Table(i)
				if !yield(formats.Piece{Off: p.l2Off + (r.base+i-r.start)*p.cs, Len: int64(len(b)), Meta: b}) {
					return
				}
			}
		}
		// Data: every cluster an extent touches lies in one data run, so
		// the extent is contiguous in the file.
		ri := 0
		for _, e := range p.data {
			c := e.Off / p.cs
			for p.runs[ri].end <= c || p.runs[ri].zero {
				ri++
			}
			r := p.runs[ri]
			off := p.dataOff + (r.base+c-r.start)*p.cs + e.Off%p.cs
			if !yield(formats.Piece{Off: off, Len: e.Len, Src: e.Off}) {
				return
			}
		}
	}
}

// chunks yields the n bytes at off in pieces of at most metaChunk bytes,
// each filled by fill(buf, offset of buf within the n bytes).
// It reports whether yield wants more.
func chunks(yield func(formats.Piece) bool, off, n int64, fill func(b []byte, first int64)) bool {
	for first := int64(0); first < n; first += metaChunk {
		b := make([]byte, min(metaChunk, n-first))
		fill(b, first)
		if !yield(formats.Piece{Off: off + first, Len: int64(len(b)), Meta: b}) {
			return false
		}
	}
	return true
}

// l2Table returns the L2 table of L1 entry i, trimmed after its last
// non-zero entry.
func (p *plan) l2Table(i int64) []byte {
	lo, hi := i*p.l2Entries, min((i+1)*p.l2Entries, p.clusters)
	b := make([]byte, (hi-lo)*8)
	end := 0
	ri := sort.Search(len(p.runs), func(k int) bool { return p.runs[k].end > lo })
	for ; ri < len(p.runs) && p.runs[ri].start < hi; ri++ {
		r := p.runs[ri]
		for c := max(lo, r.start); c < min(hi, r.end); c++ {
			v := flagZero
			if !r.zero {
				v = uint64(p.dataOff+(r.base+c-r.start)*p.cs) | flagCopied
			}
			binary.BigEndian.PutUint64(b[(c-lo)*8:], v)
			end = int(c-lo)*8 + 8
		}
	}
	return b[:end]
}
