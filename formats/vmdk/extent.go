package vmdk

import (
	"bytes"
	"compress/zlib"
	"container/list"
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// mapping is the answer of one layer for a run of the virtual disk that
// starts at some offset: n bytes of one kind. For Data it says where the
// bytes are: at foff in f, contiguous (read with one ReadAt), or in one
// compressed grain of sp.
type mapping struct {
	kind formats.Kind
	n    int64
	f    File
	foff int64
	// compressed grain (streamOptimized): grain index gi of sp whose marker
	// is at file offset foff; the run starts at byte in of the grain.
	sp *sparse
	gi int64
	in int64
}

// read fills p (len(p) <= m.n) with the run's bytes.
func (m *mapping) read(p []byte) error {
	if m.sp != nil {
		return m.sp.readCompressed(m.gi, m.foff, m.in, p)
	}
	n, err := m.f.ReadAt(p, m.foff)
	if err == io.EOF || (err == nil && n < len(p)) {
		// Bytes past the end of an extent file read as zeros (as in qemu).
		clear(p[n:])
		return nil
	}
	return err
}

// extent is one extent of a layer. mapAt answers for the extent-relative
// offset off (0 <= off < extent length) with a run of at most max bytes
// (max > 0). With read set, the caller is going to read the run, so Data
// runs must be contiguous in one file; without it the answer may merge Data
// from anywhere and must reflect the extent file's own allocation.
type extent interface {
	mapAt(off, max int64, read bool) (mapping, error)
}

// flatExtent is a FLAT or VMFS extent: bytes at start in f.
type flatExtent struct {
	f     File
	start int64
	base  bool // the layer has no parent: holes of f stay holes
}

func (e *flatExtent) mapAt(off, max int64, read bool) (mapping, error) {
	fo := e.start + off
	if read {
		return mapping{kind: formats.Data, n: max, f: e.f, foff: fo}, nil
	}
	if fo >= e.f.Size() {
		return mapping{kind: e.holeKind(), n: max}, nil
	}
	x, err := e.f.Extent(fo)
	if err != nil {
		return mapping{}, err
	}
	if x.Off > fo || x.End() <= fo {
		return mapping{}, formats.ErrBadExtent
	}
	m := mapping{kind: x.Kind, n: min(x.End()-fo, max), f: e.f, foff: fo}
	if m.kind == formats.Hole {
		m.kind = e.holeKind()
	}
	return m, nil
}

// holeKind is what an unallocated part of a flat file means: a hole at the
// base of a chain, zeros (not the parent's data) above it.
func (e *flatExtent) holeKind() formats.Kind {
	if e.base {
		return formats.Hole
	}
	return formats.Zero
}

// zeroExtent is a ZERO extent.
type zeroExtent struct{}

func (zeroExtent) mapAt(off, max int64, read bool) (mapping, error) {
	return mapping{kind: formats.Zero, n: max}, nil
}

// sparse is a grain-directory/grain-table extent: COWD, seSparse or KDMV
// (hosted sparse and streamOptimized). The directory is read at open; grain
// tables are read on demand and kept in a bounded LRU cache.
type sparse struct {
	name     string // file name for errors
	format   string // "COWD", "seSparse", "KDMV"
	f        File
	fsize    int64
	capacity int64 // bytes covered by the tables
	grain    int64 // bytes per grain
	gtLen    int64 // entries per grain table
	gtEntry  int64 // bytes per table entry: 4 or 8
	gtOff    []int64
	// decode turns a table entry (at byte offset where) into a kind and,
	// for Data, the byte offset of the grain in f.
	decode func(e uint64, where int64) (formats.Kind, int64, error)

	compressed bool // streamOptimized: Data grains are zlib streams
	markers    bool // each compressed grain starts with {lba u64, size u32}

	cache gtCache
}

// table returns grain table i (nil when the directory entry is 0).
func (s *sparse) table(i int64) ([]uint64, error) {
	off := s.gtOff[i]
	if off == 0 {
		return nil, nil
	}
	if t := s.cache.get(i); t != nil {
		return t, nil
	}
	buf := make([]byte, s.gtLen*s.gtEntry)
	if _, err := s.f.ReadAt(buf, off); err != nil {
		return nil, ioError(s.name, s.format+" grain table", off, err)
	}
	t := make([]uint64, s.gtLen)
	for j := range t {
		if s.gtEntry == 8 {
			t[j] = le64(buf[j*8:])
		} else {
			t[j] = uint64(le32(buf[j*4:]))
		}
	}
	s.cache.put(i, t)
	return t, nil
}

func (s *sparse) mapAt(off, max int64, read bool) (mapping, error) {
	if off >= s.capacity {
		return mapping{kind: formats.Hole, n: max}, nil
	}
	end := off + min(max, s.capacity-off)
	span := s.gtLen * s.grain
	var m mapping
	have := false
	pos := off
scan:
	for pos < end {
		gdi := pos / span
		gt, err := s.table(gdi)
		if err != nil {
			return mapping{}, err
		}
		if gt == nil {
			if have && m.kind != formats.Hole {
				break
			}
			m.kind, have = formats.Hole, true
			pos = min((gdi+1)*span, end)
			continue
		}
		for gi := (pos % span) / s.grain; gi < s.gtLen && pos < end; gi++ {
			kind, doff, err := s.decode(gt[gi], s.gtOff[gdi]+gi*s.gtEntry)
			if err != nil {
				return mapping{}, err
			}
			in := pos % s.grain
			n := min(s.grain-in, end-pos)
			if !have {
				have = true
				m.kind = kind
				if kind == formats.Data {
					m.f, m.foff = s.f, doff+in
					if s.compressed {
						m.sp, m.gi, m.foff, m.in = s, pos/s.grain, doff, in
					}
				}
			} else if kind != m.kind || (read && kind == formats.Data && (s.compressed || doff != m.foff+(pos-off))) {
				break scan
			}
			pos += n
			if read && kind == formats.Data && s.compressed {
				break scan
			}
		}
	}
	m.n = pos - off
	return m, nil
}

// maxCompressed bounds the stored size of one compressed grain.
func (s *sparse) maxCompressed() int64 { return 2*s.grain + 4096 }

// readCompressed decompresses grain gi whose marker (or data) is at file
// offset goff and copies its bytes from in into p.
func (s *sparse) readCompressed(gi, goff, in int64, p []byte) error {
	const markerLen = 12
	n := min(s.maxCompressed()+markerLen, s.fsize-goff)
	if n <= 0 {
		return corrupt(s.name, "grain", "", goff, "grain starts past the end of the file")
	}
	buf := make([]byte, n)
	if _, err := s.f.ReadAt(buf, goff); err != nil && err != io.EOF {
		return ioError(s.name, "grain", goff, err)
	}
	data := buf
	if s.markers {
		if n < markerLen {
			return corrupt(s.name, "grain marker", "", goff, "truncated")
		}
		lba, size := int64(le64(buf)), int64(le32(buf[8:]))
		if lba != gi*(s.grain/512) {
			return corrupt(s.name, "grain marker", "lba", goff, "is %d, the grain table says %d", lba, gi*(s.grain/512))
		}
		if size == 0 || size > n-markerLen {
			return corrupt(s.name, "grain marker", "size", goff+8, "%d bytes do not fit the file", size)
		}
		data = buf[markerLen : markerLen+size]
	}
	zr, err := zlib.NewReader(bytes.NewReader(data))
	if err != nil {
		return corrupt(s.name, "grain", "", goff, "zlib: %v", err)
	}
	grain := make([]byte, s.grain)
	got, err := io.ReadFull(zr, grain)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return corrupt(s.name, "grain", "", goff, "zlib: %v", err)
	}
	if int64(got) < s.grain && (gi+1)*s.grain < s.capacity {
		return corrupt(s.name, "grain", "", goff, "decompresses to %d bytes, want %d", got, s.grain)
	}
	copy(p, grain[in:])
	return nil
}

// gtCache is a bounded LRU of decoded grain tables, safe for concurrent
// use. Tables are never modified once decoded, so a caller may keep using
// one after it is evicted.
type gtCache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List
	items map[int64]*list.Element
}

type gtItem struct {
	key int64
	t   []uint64
}

func (c *gtCache) get(k int64) []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*gtItem).t
	}
	return nil
}

func (c *gtCache) put(k int64, t []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.items == nil {
		c.items, c.ll = map[int64]*list.Element{}, list.New()
	}
	if _, ok := c.items[k]; ok {
		return
	}
	c.items[k] = c.ll.PushFront(&gtItem{k, t})
	for c.ll.Len() > max(c.max, 1) {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*gtItem).key)
	}
}

// gtCacheBytes bounds the decoded tables cached per sparse extent.
const gtCacheBytes = 4 << 20

// readGD reads n directory entries of size entry bytes at off and turns
// each non-zero one into a grain-table byte offset with toOff, checking the
// table lies inside the file.
func (s *sparse) readGD(off, n, entry int64, toOff func(e uint64, where int64) (int64, error)) error {
	if n < 0 || off < 0 || n > (s.fsize-off)/entry || off > s.fsize {
		return corrupt(s.name, s.format+" grain directory", "", off, "%d entries of %d bytes do not fit a %d-byte file", n, entry, s.fsize)
	}
	buf := make([]byte, n*entry)
	if _, err := s.f.ReadAt(buf, off); err != nil {
		return ioError(s.name, s.format+" grain directory", off, err)
	}
	s.gtOff = make([]int64, n)
	tb := s.gtLen * s.gtEntry
	for i := range n {
		var e uint64
		if entry == 8 {
			e = le64(buf[i*8:])
		} else {
			e = uint64(le32(buf[i*4:]))
		}
		if e == 0 {
			continue
		}
		where := off + i*entry
		o, err := toOff(e, where)
		if err != nil {
			return err
		}
		if o < 512 || o > s.fsize-tb {
			return corrupt(s.name, s.format+" grain directory", "entry "+itoa(i), where, "grain table at %#x (+%d) lies outside the %d-byte file", o, tb, s.fsize)
		}
		s.gtOff[i] = o
	}
	s.cache.max = int(max(16, gtCacheBytes/(s.gtLen*8)))
	return nil
}
