package vmdk

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// What a layer defines, for incremental conversion ("warm migration").
//
// A layer of a chain either defines a range — it stores Data there, or
// marks it Zero (a zeroed or SCSI-unmapped grain, a ZERO extent, an
// unallocated part of a flat extent above the base) — or answers Hole and
// lets its parent answer. The flattened disk at chain point i (View(i))
// and the disk at a point above it can only differ where some layer above
// i defines the range; nothing else of the chain is read to find out.

// LayerExtent returns the run starting at off that layer i (0 = the leaf,
// Depth()-1 = the base) defines by itself, from metadata only: Data where
// the layer stores the bytes, Zero where it marks them zero, Hole where it
// defers to its parent (for the base: where nothing is allocated). Beyond
// the layer's own size (a disk extended after the layer was made) it is a
// Hole. Runs are at most 64 MiB long.
func (d *Disk) LayerExtent(i int, off int64) (formats.Extent, error) {
	if i < 0 || i >= len(d.layers) {
		return formats.Extent{}, fmt.Errorf("vmdk: layer %d of a %d-layer chain: %w", i, len(d.layers), formats.ErrOutOfRange)
	}
	if off < 0 || off >= d.size {
		return formats.Extent{}, fmt.Errorf("vmdk: extent at %d of a %d-byte disk: %w", off, d.size, formats.ErrOutOfRange)
	}
	n := min(d.size-off, maxExtentQuery)
	m, err := d.layers[i].mapAt(off, n, false)
	if err != nil {
		return formats.Extent{}, err
	}
	if m.n <= 0 || m.n > n {
		return formats.Extent{}, fmt.Errorf("vmdk: %s: internal error: run of %d bytes for a %d-byte query", d.layers[i].info.Name, m.n, n)
	}
	return formats.Extent{Off: off, Len: m.n, Kind: m.kind}, nil
}

// ChangedSince returns the ranges where the disk may differ from its chain
// point i (View(i); i = Depth()-1 is the base): the union of what layers
// 0 … i-1 define, sorted, non-overlapping, adjacent runs of one kind
// merged. Each range has the kind the flattened disk has there — the
// topmost of those layers that defines it wins — so Data ranges read
// through d give the new bytes, and Zero ranges now read as zeros (there
// are no Hole ranges). ChangedSince(0) is empty.
//
// The cost is one walk of the grain tables of the i layers above the
// point; the layers below it are not read. A disk larger than the layers
// at point i (extended since) reports only what the upper layers define in
// the new part: the rest reads as zeros. The walk is split in spans of
// changedSpan bytes, walked by as many goroutines as the process may run
// at once (reading a disk's grain tables is safe for concurrent use): on
// the 2-core bench VM, the 16 GiB disk of the update workload took 24 ms
// in one, 14 ms in two.
func (d *Disk) ChangedSince(i int) ([]formats.Extent, error) {
	if i < 0 || i >= len(d.layers) {
		return nil, fmt.Errorf("vmdk: chain point %d of a %d-layer chain: %w", i, len(d.layers), formats.ErrOutOfRange)
	}
	if i == 0 {
		return nil, nil
	}
	top := &Disk{layers: d.layers[:i], size: d.size}
	// At most maxChangedSpans spans, whatever size the descriptor claims
	// (up to 16 PiB): the bookkeeping stays small.
	span := max(changedSpan, (d.size+maxChangedSpans-1)/maxChangedSpans)
	spans := (d.size + span - 1) / span
	parts := make([][]formats.Extent, spans)
	errs := make([]error, spans)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(spans, int64(runtime.GOMAXPROCS(0))) {
		wg.Go(func() {
			for {
				k := next.Add(1) - 1
				if k >= spans {
					return
				}
				parts[k], errs[k] = top.changedIn(k*span, min(d.size, (k+1)*span))
				if errs[k] != nil {
					next.Store(spans) // the others stop after their span
					return
				}
			}
		})
	}
	wg.Wait()
	var out []formats.Extent
	for k, part := range parts {
		if errs[k] != nil {
			return nil, errs[k]
		}
		for _, e := range part {
			out = appendChange(out, e)
		}
	}
	return out, nil
}

// changedSpan is the part of the disk ChangedSince hands one goroutine at a
// time: 64 grain tables of 16 MiB (seSparse), 16 of 64 MiB (COWD), 16 of
// maxExtentQuery.
const changedSpan = 1 << 30

// maxChangedSpans bounds the spans of one ChangedSince walk.
const maxChangedSpans = 4096

// changedIn is ChangedSince's walk of [lo, hi) of d (the layers above the
// point).
func (d *Disk) changedIn(lo, hi int64) ([]formats.Extent, error) {
	var out []formats.Extent
	for off := lo; off < hi; {
		m, err := d.resolve(off, min(hi-off, maxExtentQuery), false)
		if err != nil {
			return nil, err
		}
		if m.kind != formats.Hole {
			out = appendChange(out, formats.Extent{Off: off, Len: m.n, Kind: m.kind})
		}
		off += m.n
	}
	return out, nil
}

// appendChange appends e to out, merged with the last extent when they
// are adjacent and of one kind.
func appendChange(out []formats.Extent, e formats.Extent) []formats.Extent {
	if k := len(out) - 1; k >= 0 && out[k].Kind == e.Kind && out[k].End() == e.Off {
		out[k].Len += e.Len
		return out
	}
	return append(out, e)
}

// LayerFileSize returns the bytes of layer i's extent files (each extent
// counted once; ZERO extents count nothing): what grows when a running
// virtual machine writes to a delta, so that a record of it can tell that
// the layer was written to since.
func (d *Disk) LayerFileSize(i int) (int64, error) {
	if i < 0 || i >= len(d.layers) {
		return 0, fmt.Errorf("vmdk: layer %d of a %d-layer chain: %w", i, len(d.layers), formats.ErrOutOfRange)
	}
	var n int64
	for _, e := range d.layers[i].exts {
		switch e := e.(type) {
		case *flatExtent:
			n += e.f.Size()
		case *sparse:
			n += e.fsize
		}
	}
	return n, nil
}
