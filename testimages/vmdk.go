package testimages

import (
	"encoding/binary"
	"fmt"
	"path"
	"strings"
)

// A layer is one point of a virtual-disk chain: a base flat disk or a delta.
type layer struct {
	desc      string // descriptor path
	extent    string // extent file path
	size      int64
	parent    *layer
	child     bool // some delta is built on this layer
	seed      uint64
	runs      []run
	kind      string // Thin, Lazy, Eager, COWD, SESparse
	cid       uint32
	grain     int64 // delta grain size
	blockSize int64 // base: VMFS file block size
}

// read fills p with [off, off+len(p)) of the disk as seen from l (flattened).
func (l *layer) read(p []byte, off int64) {
	if l.parent == nil {
		clear(p)
	} else {
		l.parent.read(p, off)
	}
	paint(p, off, l.runs, l.seed)
}

// baseBlock reports the VMFS block state of block i of a base flat file.
func (l *layer) baseBlock(i int64) blockState {
	off := i * l.blockSize
	if len(runsIn(l.runs, off, off+l.blockSize)) > 0 || l.kind == Eager {
		return blockData
	}
	if l.kind == Lazy {
		return blockTBZ
	}
	return blockHole
}

// grainSets returns the grain-aligned intervals a delta stores (data) and
// marks zero (zeroed or unmapped), and the zeroed and unmapped sets apart.
func (l *layer) grainSets() (data, zeroed, unmapped intervals) {
	g := l.grain
	for _, r := range l.runs {
		iv := interval{r.off / g * g, min((r.end()+g-1)/g*g, l.size)}
		switch r.kind {
		case runZeroed:
			zeroed = append(zeroed, iv)
		case runUnmapped:
			unmapped = append(unmapped, iv)
		default:
			data = append(data, iv)
		}
	}
	return normalize(data), normalize(zeroed), normalize(unmapped)
}

// allocated returns the bytes of the flattened disk at l that map to stored
// data: from the top down, a layer's data counts where no layer above it
// stored data or zeroed the range.
func (l *layer) allocated() int64 {
	if l.rdm() {
		return 0
	}
	var covered intervals
	var n int64
	for x := l; x != nil; x = x.parent {
		var data, zero intervals
		if x.parent == nil && x.kind != COWD && x.kind != SESparse {
			nb := (x.size + x.blockSize - 1) / x.blockSize
			for i := int64(0); i < nb; i++ {
				switch x.baseBlock(i) {
				case blockData:
					data = append(data, interval{i * x.blockSize, min((i+1)*x.blockSize, x.size)})
				case blockTBZ:
					zero = append(zero, interval{i * x.blockSize, min((i+1)*x.blockSize, x.size)})
				}
			}
			data = normalize(data)
		} else {
			var z1, z2 intervals
			data, z1, z2 = x.grainSets()
			zero = append(z1, z2...)
		}
		n += data.minus(covered).total()
		covered = normalize(append(append(covered, data...), zero...))
	}
	return n
}

// rdm reports whether l is a raw device mapping.
func (l *layer) rdm() bool { return l.kind == RDMPhysical || l.kind == RDMVirtual }

// base is the bottom layer of l's chain.
func (l *layer) base() *layer {
	for l.parent != nil {
		l = l.parent
	}
	return l
}

func (l *layer) chain() []string {
	var c []string
	for x := l; x != nil; x = x.parent {
		c = append(c, x.desc)
	}
	return c
}

// descriptor returns the text of l's descriptor file, as ESXi writes it.
func (l *layer) descriptor() []byte {
	var b strings.Builder
	parentCID := uint32(0xffffffff)
	createType, extType := "vmfs", "VMFS"
	switch l.kind {
	case COWD:
		createType, extType = "vmfsSparse", "VMFSSPARSE"
	case SESparse:
		createType, extType = "seSparse", "SESPARSE"
	case RDMPhysical:
		createType, extType = "vmfsPassthroughRawDeviceMap", "VMFSRDM"
	case RDMVirtual:
		createType, extType = "vmfsRawDeviceMap", "VMFSRAW"
	}
	if l.parent != nil {
		parentCID = l.parent.cid
	}
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%08x\nparentCID=%08x\n", l.cid, parentCID)
	fmt.Fprintf(&b, "isNativeSnapshot=\"no\"\ncreateType=\"%s\"\n", createType)
	if l.parent != nil {
		fmt.Fprintf(&b, "parentFileNameHint=\"%s\"\n", relPath(path.Dir(l.desc), l.parent.desc))
	}
	fmt.Fprintf(&b, "\n# Extent description\nRW %d %s \"%s\"\n", l.size/512, extType, path.Base(l.extent))
	b.WriteString("\n# The Disk Data Base\n#DDB\n\n")
	if l.parent == nil {
		cyl := min(l.size/(255*63*512), 65535)
		fmt.Fprintf(&b, "ddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n", cyl)
	}
	if l.kind == SESparse {
		b.WriteString("ddb.grain = \"8\"\n")
	}
	fmt.Fprintf(&b, "ddb.longContentID = \"%016x%08x%08x\"\n", mix64(l.seed^1), mix64(l.seed^2)&0xffffffff, l.cid)
	if l.kind == Thin {
		b.WriteString("ddb.thinProvisioned = \"1\"\n")
	}
	u := mix64(l.seed ^ 3)
	v := mix64(l.seed ^ 4)
	var ub [16]byte
	binary.BigEndian.PutUint64(ub[:8], u)
	binary.BigEndian.PutUint64(ub[8:], v)
	var parts []string
	for _, c := range ub {
		parts = append(parts, fmt.Sprintf("%02x", c))
	}
	fmt.Fprintf(&b, "ddb.uuid = \"%s-%s\"\nddb.virtualHWVersion = \"13\"\n", strings.Join(parts[:8], " "), strings.Join(parts[8:], " "))
	return []byte(b.String())
}

// relPath returns target relative to dir when it lies in dir, else its path
// from the volume root under /vmfs/volumes is not known: callers keep disks
// and their deltas in one directory, as ESXi does.
func relPath(dir, target string) string {
	if path.Dir(target) == dir {
		return path.Base(target)
	}
	return "../" + target
}

// deltaFile is the content of a COWD or seSparse extent: metadata bytes
// followed by grains, grain i holding the flattened disk at virt[i].
type deltaFile struct {
	l          *layer
	meta       []byte  // [0, grainsAt)
	grainsAt   int64   // byte offset of the first grain
	grainRuns  []grRun // stored grains, in file order
	fileSize   int64
	dataGrains int64
}

// grRun is n consecutive grains stored at consecutive file offsets.
type grRun struct {
	virt, file, n int64
}

func (d *deltaFile) size() int64 { return d.fileSize }

func (d *deltaFile) readAt(p []byte, off int64) {
	end := off + int64(len(p))
	clear(p)
	if off < int64(len(d.meta)) {
		copy(p, d.meta[off:])
	}
	g := d.l.grain
	for _, r := range d.grainRuns {
		rs, re := r.file, r.file+r.n*g
		if re <= off || rs >= end {
			continue
		}
		s, e := max(rs, off), min(re, end)
		d.l.read(p[s-off:e-off], r.virt+(s-rs))
	}
}

// buildCOWD lays out a vmfsSparse extent: 2 KiB header, grain directory at
// sector 4, 16 KiB grain tables of 4096 entries for the directory entries
// that have grains, then 512-byte grains in disk order.
func buildCOWD(l *layer) (*deltaFile, error) {
	const gtEntries = 4096
	sectors := l.size / 512
	if sectors > 0xffffffff {
		return nil, fmt.Errorf("testimages: COWD delta %s: capacity %d sectors exceeds 32 bits", l.extent, sectors)
	}
	data, _, _ := l.grainSets()
	nGD := (sectors + gtEntries - 1) / gtEntries
	gdBytes := (nGD*4 + 511) &^ 511
	// Which grain tables are needed.
	used := map[int64]bool{}
	for _, iv := range data {
		for gi := iv.off / 512 / gtEntries; gi <= (iv.end-1)/512/gtEntries; gi++ {
			used[gi] = true
		}
	}
	gtAt := map[int64]int64{}
	next := 4*512 + gdBytes
	for gi := int64(0); gi < nGD; gi++ {
		if used[gi] {
			gtAt[gi] = next
			next += gtEntries * 4
		}
	}
	meta := make([]byte, next)
	h := meta[:2048]
	copy(h, "COWD")
	le32(h, 4, 1)
	le32(h, 8, 3)
	le32(h, 12, uint32(sectors))
	le32(h, 16, 1)
	le32(h, 20, 4)
	le32(h, 24, uint32(nGD))
	d := &deltaFile{l: l, grainsAt: next}
	for gi, at := range gtAt {
		le32(meta, 2048+int(gi)*4, uint32(at/512))
	}
	file := next
	for _, iv := range data {
		n := (iv.end - iv.off) / 512
		d.grainRuns = append(d.grainRuns, grRun{iv.off, file, n})
		for k := int64(0); k < n; k++ {
			s := iv.off/512 + k
			le32(meta, int(gtAt[s/gtEntries]+(s%gtEntries)*4), uint32((file+k*512)/512))
		}
		file += n * 512
		d.dataGrains += n
	}
	le32(h, 28, uint32(file/512)) // next free sector
	d.meta = meta
	d.fileSize = file
	return d, nil
}

// buildSESparse lays out a seSparse extent the way qemu's reader (the
// independent judge) requires: const header (sector 0), volatile header
// (sector 1), journal header and journal, grain directory, grain tables in
// allocation order, free bitmap, back map, grains (4 KiB each).
func buildSESparse(l *layer) (*deltaFile, error) {
	const gtEntries = 4096 // 64 sectors of u64
	const grain = 4096
	sectors := l.size / 512
	data, zeroed, unmapped := l.grainSets()
	nGD := (l.size/grain + gtEntries - 1) / gtEntries
	gdSectors := ((nGD*8 + 4095) &^ 4095) / 512
	// Grain table entries by grain index.
	entries := map[int64]uint64{}
	var order []int64
	set := func(g int64, v uint64) {
		if _, ok := entries[g]; !ok {
			order = append(order, g)
		}
		entries[g] = v
	}
	for _, iv := range zeroed {
		for g := iv.off / grain; g < (iv.end+grain-1)/grain; g++ {
			set(g, 2<<60)
		}
	}
	for _, iv := range unmapped {
		for g := iv.off / grain; g < (iv.end+grain-1)/grain; g++ {
			set(g, 1<<60)
		}
	}
	d := &deltaFile{l: l}
	var idx uint64
	for _, iv := range data {
		n := (iv.end - iv.off + grain - 1) / grain
		d.grainRuns = append(d.grainRuns, grRun{iv.off, int64(idx), n}) // file offset fixed below
		for k := int64(0); k < n; k++ {
			i := idx + uint64(k)
			set(iv.off/grain+k, 3<<60|(i&0xfff)<<48|i>>12)
		}
		idx += uint64(n)
	}
	d.dataGrains = int64(idx)
	// Grain tables are allocated in the order the disk was "written": by grain.
	gts := map[int64]int64{}
	var gtOrder []int64
	for _, g := range sortedKeys(entries) {
		if _, ok := gts[g/gtEntries]; !ok {
			gts[g/gtEntries] = int64(len(gtOrder))
			gtOrder = append(gtOrder, g/gtEntries)
		}
	}
	const (
		volOff, journalHdrOff, journalOff = 1, 2, 8
		journalSize                       = 8
	)
	gdOff := int64(16)
	gtOff := gdOff + gdSectors
	gtSize := int64(len(gtOrder)) * 64
	bitmapOff := gtOff + gtSize
	bitmapSize := int64(8)
	backOff := bitmapOff + bitmapSize
	backSize := gtSize
	grainsOff := backOff + backSize
	meta := make([]byte, grainsOff*512)
	h := meta[:512]
	le64(h, 0, 0xCAFEBABE)
	le64(h, 8, 0x0000000200000001)
	le64(h, 16, uint64(sectors))
	le64(h, 24, 8)
	le64(h, 32, 64)
	for i, v := range []int64{volOff, 1, journalHdrOff, 2, journalOff, journalSize, gdOff, gdSectors, gtOff, gtSize, bitmapOff, bitmapSize, backOff, backSize, grainsOff, sectors} {
		le64(h, 80+8*i, uint64(v))
	}
	vh := meta[512:1024]
	le64(vh, 0, 0xCAFECAFE)
	le64(vh, 8, uint64(len(gtOrder))) // free GT number: next unused table
	le64(vh, 16, 1)
	for gi, n := range gts {
		le64(meta, int(gdOff*512+gi*8), 0x10000000<<32|uint64(n))
	}
	for _, g := range order {
		at := gtOff*512 + gts[g/gtEntries]*64*512 + (g%gtEntries)*8
		le64(meta, int(at), entries[g])
	}
	for i := range d.grainRuns {
		d.grainRuns[i].file = grainsOff*512 + d.grainRuns[i].file*grain
	}
	d.meta = meta
	d.grainsAt = grainsOff * 512
	d.fileSize = grainsOff*512 + int64(idx)*grain
	return d, nil
}

func sortedKeys(m map[int64]uint64) []int64 {
	ks := make([]int64, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sortInt64s(ks)
	return ks
}

func le16(b []byte, off int, v uint16) { binary.LittleEndian.PutUint16(b[off:], v) }
func le32(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
func le64(b []byte, off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
