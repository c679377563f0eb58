package nbd

import (
	"sync"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// extentCacheSize is how many extents an export remembers.
const extentCacheSize = 16

// extentCache remembers the extents an export's image reported last, shared
// by all connections: a sequential copy sends many requests per extent (a
// 256 KiB read of a 64 MiB data run), and each would otherwise walk the
// image's metadata again. Exports are read-only, so an answer stays true.
type extentCache struct {
	mu   sync.Mutex
	ring [extentCacheSize]formats.Extent
	next int
}

// cachedExtents is an image whose Extent answers come from the cache when
// it can; reads go to the image.
type cachedExtents struct {
	formats.Image
	x *extentCache
}

// Extent returns the rest from off of a remembered extent that covers off,
// or asks the image and remembers its answer.
func (c *cachedExtents) Extent(off int64) (formats.Extent, error) {
	x := c.x
	x.mu.Lock()
	for _, e := range x.ring {
		if e.Len > 0 && e.Off <= off && off < e.End() {
			x.mu.Unlock()
			return formats.Extent{Off: off, Len: e.End() - off, Kind: e.Kind}, nil
		}
	}
	x.mu.Unlock()
	e, err := c.Image.Extent(off)
	if err == nil && e.Len > 0 && e.Off <= off && off < e.End() {
		x.mu.Lock()
		x.ring[x.next] = e
		x.next = (x.next + 1) % len(x.ring)
		x.mu.Unlock()
	}
	return e, err
}
