package testimages

import (
	"fmt"
	"path"
	"sort"
	"strings"
)

// node is a file, directory or symlink of the volume being built.
type node struct {
	name     string
	path     string // relative to the root, "" for the root
	typ      uint32 // fdDir, fdFile, fdSymlink, fdSys
	parent   *node
	children []*node
	fd       int64 // FD index in .fdc.sf
	size     int64
	mode     uint32
	content  func(p []byte, off int64) // fills p (which it may assume zeroed) with file bytes
	block    func(i int64) blockState  // nil: every block holds data
	layout   string                    // requested: "", resident, subblock, blocks, pointer, double
	target   string                    // symlink target
	system   bool
	res      *resFile // system resource file this node is
	gen      uint32   // FD generation (directory entries repeat it)
	flags    uint32   // FD flags (8 on ESXi's VMFS6 .sbc.sf)
	rdm      bool     // a raw device mapping: size, no data

	// Decided when laid out.
	zla       uint32
	fdBlock   int64    // FD blockSize
	ptrs      []uint64 // top-level pointer array
	numBlocks int64
	numTBZ    int64
	numPB     int64
	allocated int64 // bytes in allocated, non-TBZ blocks, clipped to size
	holes     int64
	used      string // layout used
	runs      []MapRun
}

// mark records that [off, off+n) of the file is stored as kind.
func (n *node) mark(off, length int64, kind string) {
	length = min(length, n.size-off)
	if length <= 0 {
		return
	}
	if k := len(n.runs); k > 0 && n.runs[k-1].Kind == kind && n.runs[k-1].Off+n.runs[k-1].Len == off {
		n.runs[k-1].Len += length
		return
	}
	n.runs = append(n.runs, MapRun{off, length, kind})
}

func (n *node) fill(p []byte, off int64) {
	clear(p)
	if n.content != nil && off < n.size {
		n.content(p[:min(int64(len(p)), n.size-off)], off)
	}
}

func bytesContent(b []byte) func(p []byte, off int64) {
	return func(p []byte, off int64) { copy(p, b[off:]) }
}

// resFile is a system resource file (.fbb.sf, .fdc.sf …): a header, and
// resources at resOffset inside its file blocks, which need not be
// contiguous (ESXi's VMFS6 .fdc.sf and .sbc.sf are not).
type resFile struct {
	name    string
	geom    resGeom
	groups  int64
	numRes  int64   // resources the header announces; 0: groups·cpg·rpc
	size    int64   // file length: header, whole groups, the last one maybe cut short
	blocks  []int64 // file blocks in file order, once laid out
	nblocks int64
	hdr     []byte // header (and, on VMFS6 .fbb.sf, the child header)
}

// vol is the volume being built.
type vol struct {
	g     geometry
	spec  Spec
	root  *node
	nodes []*node // in FD order
	byFD  map[int64]*node

	fdc, sbc, pbc, fbb, pb2, jbc, vh *resFile
	nextBlock                        int64
	nextSB, nextPB                   int64
	sbStart                          int64 // first sub-block handed out
	sdd                              *node // .sdd.sf, when the layout has it
	usedBlocks                       int64
	used                             []bool // used file blocks, by block number

	// writes to the logical volume, in any order
	writes []write
	tbz    []int64 // TBZ blocks to fill with garbage
	data   []dataBlock
}

type write struct {
	off int64
	b   []byte
}

// dataBlock is one allocated, written file block.
type dataBlock struct {
	block int64
	n     *node
	index int64 // file block index
}

func (v *vol) lookup(p string) *node {
	cur := v.root
	if p == "" {
		return cur
	}
	for _, part := range strings.Split(p, "/") {
		var next *node
		for _, c := range cur.children {
			if c.name == part {
				next = c
			}
		}
		if next == nil {
			return nil
		}
		cur = next
	}
	return cur
}

// add places n at its path, creating parent directories.
func (v *vol) add(n *node) error {
	if n.path == "" || strings.HasPrefix(n.path, "/") || strings.Contains(n.path, "//") {
		return fmt.Errorf("testimages: bad path %q", n.path)
	}
	dir, name := path.Split(n.path)
	dir = strings.TrimSuffix(dir, "/")
	parent := v.lookup(dir)
	if parent == nil {
		p := &node{name: path.Base(dir), path: dir, typ: fdDir, mode: 0o40755}
		if err := v.add(p); err != nil {
			return err
		}
		parent = p
	}
	if parent.typ != fdDir {
		return fmt.Errorf("testimages: %q: parent is not a directory", n.path)
	}
	for _, c := range parent.children {
		if c.name == name {
			if c.typ == fdDir && n.typ == fdDir {
				return nil
			}
			return fmt.Errorf("testimages: %q exists twice", n.path)
		}
	}
	if len(name) > 127 {
		return fmt.Errorf("testimages: %q: name longer than 127 bytes", n.path)
	}
	n.name, n.parent = name, parent
	parent.children = append(parent.children, n)
	return nil
}

// assignFDs numbers the FDs: root 0, system files at their fixed numbers,
// the rest in tree order from the first free one — 9 in the minimal layout;
// in ESXi's, 9 on VMFS6, 8 on VMFS5 and 6 on VMFS3 (the real volumes'
// first user FDs; VMFS3's guessed), and on an upgraded VMFS5 .pb2.sf and
// .sdd.sf after the user files. In ESXi's layout user FDs get generations
// 1, 2, … in that (creation) order.
func (v *vol) assignFDs() {
	v.byFD = map[int64]*node{}
	next := int64(9)
	if v.g.esxi {
		next = map[int]int64{3: 6, 5: 8, 6: 9}[v.g.vmfs]
	}
	if v.spec.Upgraded {
		next = 6
	}
	gen := uint32(0)
	var late []*node
	var walk func(n *node)
	walk = func(n *node) {
		switch {
		case n.system && n.fd < 0:
			late = append(late, n)
		case n.system:
			v.byFD[n.fd] = n
		case n == v.root:
			n.fd, n.gen = 0, 1
			v.byFD[n.fd] = n
		default:
			n.fd = next
			next++
			gen++
			n.gen = 1
			if v.g.esxi {
				n.gen = gen
			}
			v.byFD[n.fd] = n
		}
		v.nodes = append(v.nodes, n)
		sort.SliceStable(n.children, func(i, j int) bool {
			if n.children[i].system != n.children[j].system {
				return n.children[i].system
			}
			if n.children[i].system {
				return sysOrder(n.children[i]) < sysOrder(n.children[j])
			}
			return n.children[i].name < n.children[j].name
		})
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(v.root)
	for _, n := range late {
		n.fd = next
		next++
		v.byFD[n.fd] = n
	}
}

// sysOrder orders the root's system files by their usual FD number.
func sysOrder(n *node) int {
	return map[string]int{".fbb.sf": 1, ".fdc.sf": 2, ".pbc.sf": 3, ".sbc.sf": 4, ".vh.sf": 5, ".pb2.sf": 6, ".sdd.sf": 7, ".jbc.sf": 8}[n.name]
}

// resLogical is the logical volume offset of resource i of f.
func (v *vol) resLogical(f *resFile, i int64) int64 {
	return v.fileLogical(f, v.g.resOffset(f.geom, i))
}

// fileLogical is the logical volume offset of byte off of f.
func (v *vol) fileLogical(f *resFile, off int64) int64 {
	B := v.g.blockSize
	return f.blocks[off/B]*B + off%B
}

// Directory contents.

// dirLinear builds a VMFS3/5 directory: 0x8C-byte entries, "." and ".."
// first (vmfs-format.md §9.1). Entries repeat the child's generation.
func (v *vol) dirLinear(d *node) []byte {
	type ent struct {
		typ  uint32
		n    *node
		name string
	}
	self := uint32(fdDir)
	if d.system {
		self = fdSys // .sdd.sf: "." is typed as a system file
	}
	ents := []ent{{self, d, "."}, {fdDir, v.parentOf(d), ".."}}
	for _, c := range d.children {
		ents = append(ents, ent{c.typ, c, c.name})
	}
	b := make([]byte, len(ents)*0x8C)
	for i, e := range ents {
		o := i * 0x8C
		le32(b, o, e.typ)
		le32(b, o+4, v.g.fdAddr(e.n.fd))
		le32(b, o+8, e.n.gen)
		copy(b[o+12:o+12+128], e.name)
	}
	return b
}

func (v *vol) parentOf(d *node) *node {
	if d.parent == nil {
		return d
	}
	return d.parent
}

// Fixed hash indexes of the root's system files on VMFS6.
var vmfs6SysIndex = map[string]int{
	".fbb.sf": 0x3E66, ".fdc.sf": 0x3E67, ".pbc.sf": 0x3E68, ".sbc.sf": 0x3E69,
	".vh.sf": 0x3E6A, ".pb2.sf": 0x3E6B, ".sdd.sf": 0x3E6C, ".jbc.sf": 0x3E6D,
}

// VMFS6 hashed directory geometry (vmfs-format.md §9.2).
const (
	dirHdrSize     = 0x10000
	dirSlots       = 14 // entry slots per block
	dirEntSize     = 0x120
	dirTableAt     = 0x5F8
	dirBlockHdr    = 0x40
	dirLinkSize    = 0x54
	dirLinksPerGrp = 12
	dirRootMod     = 15973
	dirMod         = 16001
)

// dirLinkSlots is the number of link groups in one link block.
func (g geometry) dirLinkSlots() int64 { return (g.md - dirBlockHdr) / dirLinkSize }

// dirHashed builds a VMFS6 hashed directory (vmfs-format.md §9.2): a 64 KiB
// header with "." and ".." and the hash table, an allocation-map block,
// entry blocks of 14 slots, then link blocks. A hash index that several
// names share points to a link group (location type 2) of up to 12 links
// {entry location, hash16}; a full group chains to the next through
// nextGroup. .sdd.sf has no entry block at all (0x11000 bytes, as ESXi
// writes it).
func (v *vol) dirHashed(d *node) ([]byte, error) {
	const (
		dotAt     = 0x3B8
		dotdotAt  = 0x4D8
		versionID = 0x00F50001
	)
	md := v.g.md
	nEnt := int64(len(d.children))
	entryBlocks := max(1, (nEnt+dirSlots-1)/dirSlots)
	if d.system {
		entryBlocks = 0
	}
	modulus := uint64(dirMod)
	if d == v.root {
		modulus = dirRootMod
	}
	// Hash indexes, and the link groups of shared ones.
	idxOf := make([]uint64, nEnt)
	byIdx := map[uint64][]int{}
	var order []uint64
	for i, c := range d.children {
		var idx uint64
		if c.system && d == v.root {
			idx = uint64(vmfs6SysIndex[c.name])
		} else {
			idx = vmfs6NameHash(c.name) % modulus
		}
		idxOf[i] = idx
		if byIdx[idx] == nil {
			order = append(order, idx)
		}
		byIdx[idx] = append(byIdx[idx], i)
	}
	var groups int64
	for _, idx := range order {
		if k := int64(len(byIdx[idx])); k > 1 {
			groups += (k + dirLinksPerGrp - 1) / dirLinksPerGrp
		}
	}
	perLinkBlock := v.g.dirLinkSlots()
	linkBlocks := (groups + perLinkBlock - 1) / perLinkBlock
	size := dirHdrSize + (1+entryBlocks+linkBlocks)*md
	b := make([]byte, size)
	le32(b, 0, versionID)
	le32(b, 4, uint32(nEnt+2))
	le32(b, 8, uint32(nEnt+2))
	le32(b, 0xC, 1) // one allocation-map block, block 0
	entry := func(o int64, typ uint32, n *node, hash uint32, name string) {
		le32(b, int(o), typ)
		le32(b, int(o)+4, v.g.fdAddr(n.fd))
		le32(b, int(o)+8, n.gen)
		le32(b, int(o)+12, hash)
		le64(b, int(o)+16, uint64(o))
		copy(b[o+24:o+24+256], name)
	}
	self := uint32(fdDir)
	if d.system {
		self = fdSys // .sdd.sf: "." is typed as a system file (§15.1)
	}
	entry(dotAt, self, d, 0, ".")
	entry(dotdotAt, fdDir, v.parentOf(d), 0, "..")
	// Allocation map (block 0): one nibble per block, high nibble first.
	am := b[dirHdrSize : dirHdrSize+md]
	le16(am, 0, 0)
	le16(am, 2, 3)
	nib := func(i int64, val byte) {
		o := dirBlockHdr + i/2
		if i%2 == 0 {
			am[o] = am[o]&0x0F | val<<4
		} else {
			am[o] = am[o]&0xF0 | val
		}
	}
	for i := int64(0); i < 2*(md-dirBlockHdr); i++ {
		nib(i, 8) // never written
	}
	nib(0, 3)
	blockHeader := func(blk int64, typ uint16, total, used int64) {
		h := b[dirHdrSize+blk*md:]
		le16(h, 0, 1)
		le16(h, 2, typ)
		le16(h, 4, uint16(total))
		le16(h, 6, uint16(total-used))
		for s := used; s < total; s++ {
			h[8+s/8] |= 1 << (s % 8)
		}
		val := byte(typ)
		if used < total {
			val |= 4
		}
		nib(blk, val)
	}
	for k := int64(0); k < entryBlocks; k++ {
		blockHeader(1+k, 1, dirSlots, min(dirSlots, nEnt-k*dirSlots))
	}
	for k := int64(0); k < linkBlocks; k++ {
		blockHeader(1+entryBlocks+k, 2, perLinkBlock, min(perLinkBlock, groups-k*perLinkBlock))
	}
	loc := make([]uint32, nEnt) // entry locations
	for i, c := range d.children {
		blk, slot := 1+int64(i)/dirSlots, int64(i)%dirSlots
		o := dirHdrSize + blk*md + dirBlockHdr + slot*dirEntSize
		var hash32 uint32
		if !(c.system && d == v.root) {
			hash32 = uint32(vmfs6NameHash(c.name))
		}
		loc[i] = uint32(1 | blk<<2 | slot<<24)
		entry(o, c.typ, c, hash32, c.name)
	}
	nextGroup := int64(0)
	groupLoc := func(gi int64) uint32 {
		blk, slot := 1+entryBlocks+gi/perLinkBlock, gi%perLinkBlock
		return uint32(2 | blk<<2 | slot<<24)
	}
	for _, idx := range order {
		members := byIdx[idx]
		if len(members) == 1 {
			le32(b, dirTableAt+int(idx)*4, loc[members[0]])
			continue
		}
		seen := map[uint16]string{}
		for _, i := range members {
			h16 := uint16(vmfs6NameHash(d.children[i].name) >> 16)
			if o, dup := seen[h16]; dup {
				return nil, fmt.Errorf("testimages: directory %q: %q and %q share hash index %d and link hash %#x: rename one", "/"+d.path, o, d.children[i].name, idx, h16)
			}
			seen[h16] = d.children[i].name
		}
		le32(b, dirTableAt+int(idx)*4, groupLoc(nextGroup))
		for len(members) > 0 {
			k := min(len(members), dirLinksPerGrp)
			gi := nextGroup
			nextGroup++
			blk, slot := 1+entryBlocks+gi/perLinkBlock, gi%perLinkBlock
			o := int(dirHdrSize + blk*md + dirBlockHdr + slot*dirLinkSize)
			le16(b, o, uint16(idx))
			b[o+2] = dirLinksPerGrp
			b[o+3] = byte(dirLinksPerGrp - k)
			b[o+4] = byte(k) // next free link
			for j, i := range members[:k] {
				le32(b, o+6+j*6, loc[i])
				le16(b, o+10+j*6, uint16(vmfs6NameHash(d.children[i].name)>>16))
			}
			members = members[k:]
			if len(members) > 0 {
				le32(b, o+0x4E, groupLoc(nextGroup))
			}
		}
	}
	return b, nil
}
