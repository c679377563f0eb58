package device

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"sync"
	"unsafe"
)

// Aligned is an io.ReaderAt over a device that accepts only reads aligned
// to its logical sector size in offset, length and buffer address — what a
// Windows \\.\PhysicalDriveN, a macOS /dev/rdiskN and a Linux file or block
// device opened with O_DIRECT demand. Every read Aligned passes to the
// device is aligned in all three:
//
//   - a read already aligned in offset, length and address goes straight
//     through (zero-copy: the engine's 2 MiB reads of file data);
//   - a small read (at most CacheMax bytes: the reader's headers, FDs,
//     pointer and directory blocks) is served from a bounded LRU of
//     aligned lines, filled by aligned reads into aligned bounce buffers;
//   - a large unaligned read reads its aligned middle straight into the
//     caller's buffer when the buffer's address there is aligned, through
//     a bounce buffer otherwise, and bounces its unaligned edges.
//
// Aligned is safe for concurrent use.
type Aligned struct {
	r     io.ReaderAt
	size  int64
	align int64 // sector size, a power of two
	line  int64 // cache line: max(align, 4 KiB)
	cache *lineCache
}

// CacheMax is the largest read Aligned serves from its line cache.
const CacheMax = 64 << 10

const (
	minLine     = 4096
	maxBounce   = 1 << 20 // bounce buffer for an unaligned large middle
	maxSector   = 1 << 16 // largest sector size accepted
	defaultSect = 4096    // when the device does not say: aligned to 4 KiB is aligned to 512 too
)

// NewAligned wraps r, a device of size bytes whose reads must be aligned to
// sector bytes (a power of two, 512 or 4096 in practice). cacheBytes bounds
// the line cache of small reads; 0 disables it (every small read then
// bounces a read of its own).
func NewAligned(r io.ReaderAt, size int64, sector int, cacheBytes int64) (*Aligned, error) {
	if sector <= 0 || sector > maxSector || sector&(sector-1) != 0 {
		return nil, fmt.Errorf("device: sector size %d: want a power of two up to %d", sector, maxSector)
	}
	if size < 0 {
		return nil, fmt.Errorf("device: negative size %d", size)
	}
	a := &Aligned{r: r, size: size, align: int64(sector), line: max(int64(sector), minLine)}
	if n := cacheBytes / a.line; n > 0 {
		a.cache = newLineCache(int(n))
	}
	return a, nil
}

// Size returns the device size given to NewAligned.
func (a *Aligned) Size() int64 { return a.size }

// SectorSize returns the alignment of the reads that reach the device.
func (a *Aligned) SectorSize() int { return int(a.align) }

// ReadAt implements io.ReaderAt.
func (a *Aligned) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("device: negative offset")
	}
	if off >= a.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > a.size-off {
		p, eof = p[:a.size-off], io.EOF
	}
	if len(p) == 0 {
		return 0, eof
	}
	if err := a.read(p, off); err != nil {
		return 0, err
	}
	return len(p), eof
}

func (a *Aligned) read(p []byte, off int64) error {
	n := int64(len(p))
	if isAligned(off, n, p, a.align) {
		return a.device(p, off)
	}
	if n <= CacheMax {
		return a.small(p, off)
	}
	lo, hi := alignUp(off, a.align), alignDown(off+n, a.align)
	if lo >= hi {
		return a.bounce(p, off)
	}
	if lo > off {
		if err := a.bounce(p[:lo-off], off); err != nil {
			return err
		}
	}
	mid := p[lo-off : hi-off]
	if addrAligned(mid, a.align) {
		if err := a.device(mid, lo); err != nil {
			return err
		}
	} else if err := a.bounce(mid, lo); err != nil {
		return err
	}
	if hi < off+n {
		return a.bounce(p[hi-off:], hi)
	}
	return nil
}

// device reads p (aligned in offset, length and address) from the device.
// Bytes past the device size (a file whose size is not a multiple of the
// sector) read as zeros.
func (a *Aligned) device(p []byte, off int64) error {
	n, err := a.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if (err == nil || err == io.EOF) && off+int64(n) >= a.size {
		clear(p[n:])
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// bounce reads p at off through aligned bounce buffers of at most maxBounce
// bytes.
func (a *Aligned) bounce(p []byte, off int64) error {
	end := off + int64(len(p))
	lo, hi := alignDown(off, a.align), alignUp(end, a.align)
	buf := alignedBuf(int(min(hi-lo, maxBounce)), int(a.align))
	for pos := lo; pos < hi; {
		k := min(hi-pos, int64(len(buf)))
		b := buf[:k]
		if err := a.device(b, pos); err != nil {
			return err
		}
		// Copy the part of [pos, pos+k) that lies in [off, end).
		s, e := max(pos, off), min(pos+k, end)
		copy(p[s-off:e-off], b[s-pos:e-pos])
		pos += k
	}
	return nil
}

// small serves a read of at most CacheMax bytes from the line cache,
// reading each run of missing lines with one aligned read.
func (a *Aligned) small(p []byte, off int64) error {
	if a.cache == nil {
		return a.bounce(p, off)
	}
	end := off + int64(len(p))
	first, last := off/a.line, (end-1)/a.line
	lines := make([][]byte, last-first+1)
	for i := range lines {
		lines[i] = a.cache.get(first + int64(i))
	}
	for i := 0; i < len(lines); {
		if lines[i] != nil {
			i++
			continue
		}
		j := i
		for j < len(lines) && lines[j] == nil {
			j++
		}
		// Lines [i, j) are missing: read them at once, clipped to the
		// device's last sector.
		lo := (first + int64(i)) * a.line
		hi := min((first+int64(j))*a.line, alignUp(a.size, a.align))
		buf := alignedBuf(int(hi-lo), int(a.align))
		if err := a.device(buf, lo); err != nil {
			return err
		}
		for k := i; k < j; k++ {
			s := int64(k-i) * a.line
			l := buf[s:min(s+a.line, int64(len(buf))):min(s+a.line, int64(len(buf)))]
			lines[k] = l
			a.cache.put(first+int64(k), l)
		}
		i = j
	}
	for i, l := range lines {
		lo := (first + int64(i)) * a.line
		s, e := max(lo, off), min(lo+int64(len(l)), end)
		if e <= s {
			return io.ErrUnexpectedEOF // cannot happen: lines cover the device up to its size
		}
		copy(p[s-off:e-off], l[s-lo:e-lo])
	}
	return nil
}

// lineCache is a bounded LRU of immutable cache lines.
type lineCache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List
	items map[int64]*list.Element
}

type lineEntry struct {
	idx  int64
	data []byte
}

func newLineCache(n int) *lineCache {
	return &lineCache{max: n, ll: list.New(), items: map[int64]*list.Element{}}
}

func (c *lineCache) get(idx int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[idx]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lineEntry).data
	}
	return nil
}

func (c *lineCache) put(idx int64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[idx]; ok {
		c.ll.MoveToFront(e)
		return
	}
	c.items[idx] = c.ll.PushFront(&lineEntry{idx, data})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.items, e.Value.(*lineEntry).idx)
	}
}

// alignedBuf returns n bytes whose first byte's address is a multiple of
// align (a power of two): it over-allocates and slices.
func alignedBuf(n, align int) []byte {
	b := make([]byte, n+align)
	o := int(-uintptr(unsafe.Pointer(unsafe.SliceData(b))) & uintptr(align-1))
	return b[o : o+n : o+n]
}

// addrAligned reports whether p's first byte sits at a multiple of align.
func addrAligned(p []byte, align int64) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))&uintptr(align-1) == 0
}

// isAligned reports whether a read of n bytes at off into p needs no help.
func isAligned(off, n int64, p []byte, align int64) bool {
	return off&(align-1) == 0 && n&(align-1) == 0 && addrAligned(p, align)
}

func alignDown(x, a int64) int64 { return x &^ (a - 1) }
func alignUp(x, a int64) int64   { return (x + a - 1) &^ (a - 1) }
