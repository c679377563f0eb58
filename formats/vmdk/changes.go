package vmdk

import (
	"fmt"

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
// the new part: the rest reads as zeros.
func (d *Disk) ChangedSince(i int) ([]formats.Extent, error) {
	if i < 0 || i >= len(d.layers) {
		return nil, fmt.Errorf("vmdk: chain point %d of a %d-layer chain: %w", i, len(d.layers), formats.ErrOutOfRange)
	}
	var out []formats.Extent
	if i == 0 {
		return out, nil
	}
	top := &Disk{layers: d.layers[:i], size: d.size}
	for off := int64(0); off < d.size; {
		m, err := top.resolve(off, min(d.size-off, maxExtentQuery), false)
		if err != nil {
			return nil, err
		}
		if m.kind != formats.Hole {
			if k := len(out) - 1; k >= 0 && out[k].Kind == m.kind && out[k].End() == off {
				out[k].Len += m.n
			} else {
				out = append(out, formats.Extent{Off: off, Len: m.n, Kind: m.kind})
			}
		}
		off += m.n
	}
	return out, nil
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
