package convert

import (
	"fmt"
	"sort"
	"sync"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// BadRanges collects unreadable ranges from several goroutines and returns
// them sorted and merged. Its Add method fits Options.BadRange.
type BadRanges struct {
	mu     sync.Mutex
	ranges []BadRange
}

// BadRange is one unreadable range of the virtual disk, left as zeros.
type BadRange struct {
	Off   int64  `json:"offset"`
	Len   int64  `json:"length"`
	Error string `json:"error"`
}

// Add records [off, off+n).
func (b *BadRanges) Add(off, n int64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	b.ranges = append(b.ranges, BadRange{off, n, msg})
}

// List returns the ranges in order, adjacent ones merged (keeping the
// first error text).
func (b *BadRanges) List() []BadRange {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := append([]BadRange(nil), b.ranges...)
	sort.Slice(r, func(i, j int) bool { return r[i].Off < r[j].Off })
	var out []BadRange
	for _, x := range r {
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len >= x.Off {
			out[n-1].Len = max(out[n-1].Len, x.Off+x.Len-out[n-1].Off)
			continue
		}
		out = append(out, x)
	}
	return out
}

// Total is the number of bytes in bad ranges.
func (b *BadRanges) Total() int64 {
	var n int64
	for _, r := range b.List() {
		n += r.Len
	}
	return n
}

// RescueExtents walks img's allocation map like formats.Extents, but a
// range whose map cannot be read (a corrupt or unreadable pointer block,
// grain table …) does not stop it: the failing offset up to the next 1 MiB
// boundary is passed to warn and listed as Data, so that the copy tries to
// read it — rescue reading then zero-fills and reports what fails.
func RescueExtents(img formats.Image, warn func(off, n int64, err error)) []formats.Extent {
	const step = 1 << 20
	var out []formats.Extent
	add := func(e formats.Extent) {
		if n := len(out); n > 0 && out[n-1].Kind == e.Kind && out[n-1].End() == e.Off {
			out[n-1].Len += e.Len
			return
		}
		out = append(out, e)
	}
	size := img.Size()
	for pos := int64(0); pos < size; {
		e, err := img.Extent(pos)
		if err != nil || e.Len <= 0 || e.Off > pos || e.End() <= pos {
			if err == nil {
				err = fmt.Errorf("extent query at %d returned [%d, +%d)", pos, e.Off, e.Len)
			}
			end := min((pos/step+1)*step, size)
			if warn != nil {
				warn(pos, end-pos, err)
			}
			add(formats.Extent{Off: pos, Len: end - pos, Kind: formats.Data})
			pos = end
			continue
		}
		e.Len = min(e.End(), size) - pos
		e.Off = pos
		add(e)
		pos = e.End()
	}
	return out
}
