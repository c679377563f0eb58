package qcow2

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Update is a planned in-place update of an existing qcow2 image (see
// PlanUpdate). It has the same shape in every format package:
//
//   - FileSize: the size the file is set to before the first write, 0 to
//     leave it;
//   - Stages: written in order, each followed by a flush; a piece copies
//     Meta, or new virtual-disk bytes [Src, Src+Len), or (Meta nil, Src < 0)
//     writes zeros over whatever the file holds;
//   - PunchZeros: zero pieces may be deallocated instead of written (never
//     here).
type Update struct {
	FileSize   int64
	Stages     [][]formats.Piece
	PunchZeros bool
}

// meta is what PlanUpdate and Fingerprint read of an image up front: the
// header, the L1 table and the refcount table. L2 tables and refcount
// blocks are read when needed — the planner reads those the changes touch,
// the fingerprint streams them all through one buffer — so that neither
// holds a disk's worth of tables in memory.
type meta struct {
	r          io.ReaderAt
	h          *header
	cs         int64
	l2Entries  int64
	rcPerBlock int64
	fileSize   int64
	l1         []uint64 // raw entries, L1Size of them
	rt         []int64  // refcount table: refcount block offsets (0: none)
	end        int64    // clusters: highest cluster with a refcount, plus one
	lastK      int64    // the refcount block that counts cluster end-1,
	lastBlock  []byte   // as read to find the end
}

// readMeta reads and checks the header, L1 table and refcount table of r
// for an update, and finds the end of the clusters in use (reading
// refcount blocks from the last one down to the first that counts a
// cluster). Images an update cannot honour (snapshots, backing file,
// encryption, lazy refcounts that are dirty, refcounts other than 16 bits
// …) are refused.
func readMeta(r io.ReaderAt, fileSize int64) (*meta, error) {
	if _, err := Open(r, fileSize); err != nil {
		return nil, err
	}
	b := make([]byte, min(fileSize, 512))
	if n, err := r.ReadAt(b, 0); n < len(b) {
		return nil, fmt.Errorf("qcow2: reading header: %w", err)
	}
	h, err := parseHeader(b)
	if err != nil {
		return nil, err
	}
	switch {
	case h.Snapshots != 0:
		return nil, errf(ErrUnsupported, "header", "nb_snapshots", hSnapshots, "%d internal snapshots share clusters; an update cannot write in place", h.Snapshots)
	case h.Incompatible&incDirty != 0:
		return nil, errf(ErrUnsupported, "header", "incompatible_features", hIncompatible, "the dirty bit is set (lazy refcounts); run qemu-img check -r all first")
	case h.RefcountOrder != refcountOrder16:
		return nil, errf(ErrUnsupported, "header", "refcount_order", hRefcountOrder, "%d-bit refcounts; an update writes 16-bit ones only", 1<<h.RefcountOrder)
	}
	m := &meta{r: r, h: h, fileSize: fileSize}
	m.cs = int64(1) << h.ClusterBits
	m.l2Entries, m.rcPerBlock = m.cs/8, m.cs/2
	// L1 (Open checked the part that maps the disk; check all of it).
	l1Bytes := int64(h.L1Size) * 8
	if int64(h.L1Offset) > fileSize-l1Bytes {
		return nil, errf(ErrCorrupt, "header", "l1_table_offset", hL1Offset, "L1 table of %d entries beyond the %d-byte file", h.L1Size, fileSize)
	}
	raw := make([]byte, l1Bytes)
	if _, err := formats.ReadFull(r, raw, int64(h.L1Offset)); err != nil {
		return nil, fmt.Errorf("qcow2: reading L1 table: %w", err)
	}
	m.l1 = make([]uint64, h.L1Size)
	for i := range m.l1 {
		m.l1[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	// Refcount table.
	rtBytes := int64(h.RefcountClusters) * m.cs
	rtOff := int64(h.RefcountOffset)
	if rtBytes > maxRefTableBytes || rtOff%m.cs != 0 || rtOff > fileSize-rtBytes {
		return nil, errf(ErrCorrupt, "header", "refcount_table_offset", hRefcountOffset, "refcount table [0x%x, +0x%x) is misaligned or beyond the %d-byte file", rtOff, rtBytes, fileSize)
	}
	raw = make([]byte, rtBytes)
	if _, err := formats.ReadFull(r, raw, rtOff); err != nil {
		return nil, fmt.Errorf("qcow2: reading refcount table: %w", err)
	}
	m.rt = make([]int64, rtBytes/8)
	for k := range m.rt {
		v := binary.BigEndian.Uint64(raw[k*8:])
		off := int64(v &^ 0x1ff)
		if v&0x1ff != 0 || off%m.cs != 0 || (off != 0 && off > fileSize-m.cs) {
			return nil, errf(ErrCorrupt, fmt.Sprintf("refcount table entry %d", k), "", rtOff+int64(k)*8, "refcount block at 0x%x is misaligned or beyond the %d-byte file", off, fileSize)
		}
		m.rt[k] = off
	}
	// The end: the last refcount block that counts a cluster, its last
	// cluster counted.
	blk := make([]byte, m.cs)
	for k := int64(len(m.rt)) - 1; k >= 0 && m.end == 0; k-- {
		if ok, err := m.refBlock(k, blk); err != nil || !ok {
			if err != nil {
				return nil, err
			}
			continue
		}
		for i := m.rcPerBlock - 1; i >= 0; i-- {
			if binary.BigEndian.Uint16(blk[i*2:]) != 0 {
				m.end = k*m.rcPerBlock + i + 1
				m.lastK, m.lastBlock = k, blk
				break
			}
		}
	}
	if m.end == 0 {
		return nil, errf(ErrCorrupt, "refcount table", "", rtOff, "no cluster has a refcount")
	}
	return m, nil
}

// refBlock reads refcount block k into b (one cluster); false when the
// refcount table has no block there (b is left alone).
func (m *meta) refBlock(k int64, b []byte) (bool, error) {
	if k >= int64(len(m.rt)) || m.rt[k] == 0 {
		return false, nil
	}
	if k == m.lastK && m.lastBlock != nil {
		copy(b, m.lastBlock)
		return true, nil
	}
	if _, err := formats.ReadFull(m.r, b[:m.cs], m.rt[k]); err != nil {
		return false, fmt.Errorf("qcow2: reading refcount block at 0x%x: %w", m.rt[k], err)
	}
	return true, nil
}

// l2Table reads the L2 table of L1 entry i into b (one cluster, raw
// big-endian entries); false when there is none (b is left alone).
func (m *meta) l2Table(i int64, b []byte) (bool, error) {
	if i >= int64(len(m.l1)) {
		return false, nil
	}
	off := int64(m.l1[i] & offsetMask)
	if off == 0 {
		return false, nil
	}
	if m.l1[i]&l1Reserved != 0 || off%m.cs != 0 || off > m.fileSize-m.cs {
		return false, errf(ErrCorrupt, fmt.Sprintf("L1 entry %d", i), "", int64(m.h.L1Offset)+i*8, "L2 table at 0x%x is misaligned or beyond the file", off)
	}
	if _, err := formats.ReadFull(m.r, b[:m.cs], off); err != nil {
		return false, fmt.Errorf("qcow2: reading L2 table at 0x%x: %w", off, err)
	}
	return true, nil
}

// l2Copy is an L2 table as the planner changes it: raw big-endian entries,
// which become the new table's bytes when changed.
type l2Copy struct {
	b       []byte
	changed bool
}

func (t *l2Copy) get(k int64) uint64 { return binary.BigEndian.Uint64(t.b[k*8:]) }

func (t *l2Copy) set(k int64, v uint64) {
	if t.get(k) != v {
		binary.BigEndian.PutUint64(t.b[k*8:], v)
		t.changed = true
	}
}

// PlanUpdate plans the update of the qcow2 image r (fileSize bytes) to a
// disk of newSize bytes of which only changes differ from what the image
// holds: sorted, non-overlapping extents within [0, newSize); Data ranges
// are copied from the new disk, Zero and Hole ranges now read as zeros.
//
// Per guest cluster that a change touches:
//
//   - Data, cluster stored: the changed bytes are written in place (Zero
//     and Hole parts as zeros).
//   - Data, cluster not stored (unallocated or a zero cluster): a new
//     cluster at the end of the file receives the whole cluster read from
//     the new disk; a zero cluster that keeps a host cluster (v3
//     "preallocated zero") gets the whole cluster written there instead.
//   - No Data, the whole cluster zero, version 3: the L2 entry gets the
//     zero flag and keeps its host cluster allocated (refcount 1), ready to
//     be written in place by a later update. Version 2, or a partial
//     cluster: zeros written in place; nothing to do for clusters that are
//     not stored.
//
// Metadata is copied on write: every L2 table that changes, the L1 table,
// every refcount block that changes and the refcount table are written
// anew at the end of the file, the clusters they replace freed (refcount
// 0), and the header — one sector — written last to point at them. The
// plan has two stages: the data and the new metadata (none of which is
// reachable from the header yet, so their order does not matter), then
// the header; the caller flushes after each. Until the header write the
// image is the old one (plus in-place data), valid for qemu-img check;
// after it, the new one. Where new clusters go depends only
// on the metadata reachable from the header, so a run cut short anywhere
// plans the same writes again; a run after a complete one finds every
// cluster stored and changes no metadata: the update is idempotent.
//
// A larger newSize grows the image (the L1 table is rewritten anyway); a
// smaller one is refused with ErrInvalid.
func PlanUpdate(r io.ReaderAt, fileSize, newSize int64, changes []formats.Extent) (*Update, error) {
	m, err := readMeta(r, fileSize)
	if err != nil {
		return nil, err
	}
	oldSize := int64(m.h.Size)
	if newSize < oldSize {
		return nil, errf(ErrInvalid, "options", "size", -1, "the disk shrank from %d to %d bytes; an update cannot shrink a qcow2 image", oldSize, newSize)
	}
	if err := checkExtents(newSize, changes); err != nil {
		return nil, err
	}
	cs, v3 := m.cs, m.h.Version >= 3
	clusters := (newSize + cs - 1) / cs
	l1Need := (clusters + m.l2Entries - 1) / m.l2Entries
	l1Size := max(int64(m.h.L1Size), l1Need)
	if l1Size*8 > maxL1Bytes {
		return nil, errf(ErrInvalid, "options", "size", -1, "a %d-byte disk needs a %d-byte L1 table; qemu accepts at most %d", newSize, l1Size*8, maxL1Bytes)
	}

	next := m.end // next free cluster
	alloc := func() int64 { next++; return (next - 1) * cs }
	tables := map[int64]*l2Copy{} // L1 index → the L2 table as changed
	var data []formats.Piece
	table := func(i int64) (*l2Copy, error) {
		if t, ok := tables[i]; ok {
			return t, nil
		}
		t := &l2Copy{b: make([]byte, cs)} // zeros: no table yet
		if _, err := m.l2Table(i, t.b); err != nil {
			return nil, err
		}
		tables[i] = t
		return t, nil
	}

	// Walk the changes cluster by cluster.
	type seg struct {
		off, n int64
		data   bool
	}
	var segs []seg
	flush := func(c int64) error {
		if len(segs) == 0 {
			return nil
		}
		defer func() { segs = segs[:0] }()
		i, k := c/m.l2Entries, c%m.l2Entries
		t, err := table(i)
		if err != nil {
			return err
		}
		v := t.get(k)
		entOff := int64(-1) // a new table
		if i < int64(len(m.l1)) {
			entOff = int64(m.l1[i]&offsetMask) + k*8
		}
		host := int64(v & offsetMask)
		switch {
		case v&flagCompressed != 0:
			return errf(ErrUnsupported, fmt.Sprintf("L2 entry of cluster %d", c), "", entOff, "compressed cluster; an update cannot write it in place")
		case v&l2Reserved != 0:
			return errf(ErrCorrupt, fmt.Sprintf("L2 entry of cluster %d", c), "", entOff, "reserved bits set in 0x%016x", v)
		case host != 0 && (host%cs != 0 || host >= fileSize):
			return errf(ErrCorrupt, fmt.Sprintf("L2 entry of cluster %d", c), "", entOff, "cluster at 0x%x is misaligned or beyond the %d-byte file", host, fileSize)
		case host != 0 && v&flagCopied == 0:
			return errf(ErrUnsupported, fmt.Sprintf("L2 entry of cluster %d", c), "", entOff, "shared cluster (refcount above 1)")
		case v&flagZero != 0 && !v3:
			return errf(ErrCorrupt, fmt.Sprintf("L2 entry of cluster %d", c), "", entOff, "zero flag in a version 2 image")
		}
		stored := host != 0 && v&flagZero == 0
		hasData, zeroLen := false, int64(0)
		for _, s := range segs {
			if s.data {
				hasData = true
			} else {
				zeroLen += s.n
			}
		}
		vlen := min(cs, newSize-c*cs)
		switch {
		case hasData && stored:
			for _, s := range segs {
				p := formats.Piece{Off: host + s.off - c*cs, Len: s.n, Src: s.off}
				if !s.data {
					p.Src = -1
				}
				data = addPiece(data, p)
			}
		case hasData:
			if host == 0 {
				host = alloc()
			}
			for _, p := range srcPieces(host, c*cs, cs, newSize) {
				data = addPiece(data, p)
			}
			t.set(k, uint64(host)|flagCopied)
		case !stored:
			// reads as zero already
		case zeroLen == vlen && v3:
			t.set(k, uint64(host)|flagCopied|flagZero)
		default:
			for _, s := range segs {
				data = addPiece(data, formats.Piece{Off: host + s.off - c*cs, Len: s.n, Src: -1})
			}
		}
		return nil
	}
	cur := int64(-1)
	for _, e := range changes {
		for off := e.Off; off < e.End(); {
			c := off / cs
			stop := min(e.End(), (c+1)*cs)
			if c != cur {
				if err := flush(cur); err != nil {
					return nil, err
				}
				cur = c
			}
			segs = append(segs, seg{off: off, n: stop - off, data: e.Kind == formats.Data})
			off = stop
		}
	}
	if err := flush(cur); err != nil {
		return nil, err
	}

	u := &Update{}
	var idx []int64
	for i, t := range tables {
		if t.changed {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	if len(idx) == 0 && newSize == oldSize {
		if len(data) > 0 {
			u.Stages = [][]formats.Piece{data}
		}
		return u, nil
	}

	// Copy on write: new L2 tables, L1, refcount blocks and table. Every
	// cluster from m.end on is new (refcount 1) but for spare refcount
	// block slots; freed holds the old clusters they replace (refcount 0).
	freed := map[int64]bool{}
	var metaPieces []formats.Piece
	l1 := make([]uint64, l1Size)
	copy(l1, m.l1)
	for _, i := range idx {
		if i < int64(len(m.l1)) && m.l1[i]&offsetMask != 0 {
			freed[int64(m.l1[i]&offsetMask)/cs] = true // the table it replaces
		}
		off := alloc()
		l1[i] = uint64(off) | flagCopied
		metaPieces = append(metaPieces, formats.Piece{Off: off, Len: cs, Meta: tables[i].b})
	}
	for k := range (int64(m.h.L1Size)*8 + cs - 1) / cs {
		freed[int64(m.h.L1Offset)/cs+k] = true
	}
	l1Clusters := (l1Size*8 + cs - 1) / cs
	l1Off := next * cs
	next += l1Clusters
	l1b := make([]byte, l1Clusters*cs)
	for i, v := range l1 {
		binary.BigEndian.PutUint64(l1b[i*8:], v)
	}
	metaPieces = append(metaPieces, formats.Piece{Off: l1Off, Len: int64(len(l1b)), Meta: l1b})
	for k := range int64(m.h.RefcountClusters) {
		freed[int64(m.h.RefcountOffset)/cs+k] = true
	}

	// Refcount blocks and table: the fixed point of "every refcount block
	// that changes is copied, the copies and the table need refcounts,
	// the blocks they replace are freed". Copies go at base, the table
	// after them.
	base := next
	var nRB, nRT int64
	var dirty []int64
	for {
		end := base + nRB + nRT
		// A block that changes frees its old copy, which changes the block
		// counting that copy.
		set := map[int64]bool{}
		var queue []int64
		add := func(k int64) {
			if !set[k] {
				set[k] = true
				queue = append(queue, k)
			}
		}
		for k := m.end / m.rcPerBlock; k <= (end-1)/m.rcPerBlock; k++ {
			add(k)
		}
		for c := range freed {
			add(c / m.rcPerBlock)
		}
		for len(queue) > 0 {
			k := queue[len(queue)-1]
			queue = queue[:len(queue)-1]
			if k < int64(len(m.rt)) && m.rt[k] != 0 {
				freed[m.rt[k]/cs] = true
				add(m.rt[k] / cs / m.rcPerBlock)
			}
		}
		dirty = slices.Sorted(maps.Keys(set))
		rtEntries := max(int64(len(m.rt)), (end-1)/m.rcPerBlock+1, dirty[len(dirty)-1]+1)
		needRT := (rtEntries*8 + cs - 1) / cs
		needRB := int64(len(dirty))
		if needRB <= nRB && needRT == nRT {
			break
		}
		nRB, nRT = max(nRB, needRB), needRT
	}
	if nRT*cs > maxRefTableBytes {
		return nil, errf(ErrInvalid, "options", "size", -1, "refcount table of %d bytes exceeds qemu's %d", nRT*cs, maxRefTableBytes)
	}
	end := base + nRB + nRT
	spareLo, spareHi := base+int64(len(dirty)), base+nRB // unused slots: refcount 0
	newRB := make(map[int64]int64, len(dirty))
	for j, k := range dirty {
		newRB[k] = (base + int64(j)) * cs
	}
	for _, k := range dirty {
		b := make([]byte, cs) // zeros: no block yet
		if _, err := m.refBlock(k, b); err != nil {
			return nil, err
		}
		lo, hi := k*m.rcPerBlock, (k+1)*m.rcPerBlock
		for c := max(lo, m.end); c < min(hi, end); c++ {
			if c < spareLo || c >= spareHi {
				binary.BigEndian.PutUint16(b[(c-lo)*2:], 1)
			}
		}
		for c := range freed {
			if c >= lo && c < hi {
				binary.BigEndian.PutUint16(b[(c-lo)*2:], 0)
			}
		}
		metaPieces = append(metaPieces, formats.Piece{Off: newRB[k], Len: cs, Meta: b})
	}
	rtOff := (base + nRB) * cs
	rtb := make([]byte, nRT*cs)
	for k, off := range m.rt {
		binary.BigEndian.PutUint64(rtb[k*8:], uint64(off))
	}
	for k, off := range newRB {
		binary.BigEndian.PutUint64(rtb[k*8:], uint64(off))
	}
	metaPieces = append(metaPieces, formats.Piece{Off: rtOff, Len: int64(len(rtb)), Meta: rtb})
	sort.Slice(metaPieces, func(a, b int) bool { return metaPieces[a].Off < metaPieces[b].Off })

	// Header: the fields that change all lie in its first 64 bytes.
	hb := make([]byte, 64)
	if _, err := formats.ReadFull(r, hb, 0); err != nil {
		return nil, fmt.Errorf("qcow2: reading header: %w", err)
	}
	be := binary.BigEndian
	be.PutUint64(hb[hSize:], uint64(newSize))
	be.PutUint32(hb[hL1Size:], uint32(l1Size))
	be.PutUint64(hb[hL1Offset:], uint64(l1Off))
	be.PutUint64(hb[hRefcountOffset:], uint64(rtOff))
	be.PutUint32(hb[hRefcountClusters:], uint32(nRT))

	// Two stages: the data and the new tables, which nothing reachable
	// points at until the header does (so their order does not matter,
	// and one flush makes them all durable), then the header.
	u.FileSize = end * cs
	u.Stages = [][]formats.Piece{append(data, metaPieces...), {{Off: 0, Len: int64(len(hb)), Meta: hb}}}
	return u, nil
}

// addPiece appends p to ps, merging it with the last piece when both copy
// contiguous virtual bytes to contiguous file bytes, or both write zeros.
func addPiece(ps []formats.Piece, p formats.Piece) []formats.Piece {
	if n := len(ps); n > 0 && p.Meta == nil && ps[n-1].Meta == nil {
		q := &ps[n-1]
		if q.Off+q.Len == p.Off && ((q.Src < 0 && p.Src < 0) || (q.Src >= 0 && q.Src+q.Len == p.Src)) {
			q.Len += p.Len
			return ps
		}
	}
	return append(ps, p)
}

// srcPieces copies virtual bytes [src, src+n) to file offset off; what lies
// beyond the disk's end is written as zeros.
func srcPieces(off, src, n, size int64) []formats.Piece {
	k := max(0, min(n, size-src))
	var ps []formats.Piece
	if k > 0 {
		ps = append(ps, formats.Piece{Off: off, Len: k, Src: src})
	}
	if k < n {
		ps = append(ps, formats.Piece{Off: off + k, Len: n - k, Src: -1})
	}
	return ps
}

// Fingerprint returns a SHA-256 over the image's metadata: the header
// cluster, the L1 table, every L2 table it points at (in L1 order, each
// after its L1 entry), the refcount table and every refcount block (each
// after its refcount table entry). Data clusters are not read; the tables
// are read one at a time through one buffer.
func Fingerprint(r io.ReaderAt, fileSize int64) ([32]byte, error) {
	m, err := readMeta(r, fileSize)
	if err != nil {
		return [32]byte{}, err
	}
	h := sha256.New()
	buf := make([]byte, m.cs)
	hc := buf[:min(m.cs, fileSize)]
	if _, err := formats.ReadFull(r, hc, 0); err != nil {
		return [32]byte{}, fmt.Errorf("qcow2: reading header: %w", err)
	}
	h.Write(hc)
	var b [8]byte
	for i, v := range m.l1 {
		binary.BigEndian.PutUint64(b[:], v)
		h.Write(b[:])
		if ok, err := m.l2Table(int64(i), buf); err != nil {
			return [32]byte{}, err
		} else if ok {
			h.Write(buf)
		}
	}
	for k, off := range m.rt {
		binary.BigEndian.PutUint64(b[:], uint64(off))
		h.Write(b[:])
		if ok, err := m.refBlock(int64(k), buf); err != nil {
			return [32]byte{}, err
		} else if ok {
			h.Write(buf)
		}
	}
	return [32]byte(h.Sum(nil)), nil
}
