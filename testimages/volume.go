package testimages

import (
	"encoding/binary"
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
	fixedIdx int      // VMFS6 root: fixed hash index of a system file

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
// resources at resOffset inside a run of contiguous blocks.
type resFile struct {
	name    string
	geom    resGeom
	groups  int64
	count   int64 // resources in use (or the number of file blocks, for .fbb.sf)
	first   int64 // first block
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

// assignFDs numbers the FDs: root 0, system files 1–8, the rest from 9 in
// tree order.
func (v *vol) assignFDs() {
	v.byFD = map[int64]*node{}
	next := int64(9)
	var walk func(n *node)
	walk = func(n *node) {
		if n.system {
			// fixed
		} else if n == v.root {
			n.fd = 0
		} else {
			n.fd = next
			next++
		}
		v.byFD[n.fd] = n
		v.nodes = append(v.nodes, n)
		sort.SliceStable(n.children, func(i, j int) bool {
			if n.children[i].system != n.children[j].system {
				return n.children[i].system
			}
			if n.children[i].system {
				return n.children[i].fd < n.children[j].fd
			}
			return n.children[i].name < n.children[j].name
		})
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(v.root)
}

// resLogical is the logical volume offset of resource i of f.
func (v *vol) resLogical(f *resFile, i int64) int64 {
	return f.first*v.g.blockSize + v.g.resOffset(f.geom, i)
}

// Directory contents.

// dirLinear builds a VMFS3/5 directory: 0x8C-byte entries, "." and ".."
// first (vmfs-format.md §9.1).
func (v *vol) dirLinear(d *node) []byte {
	ents := []struct {
		typ  uint32
		fd   int64
		name string
	}{{fdDir, d.fd, "."}, {fdDir, v.parentOf(d).fd, ".."}}
	for _, c := range d.children {
		ents = append(ents, struct {
			typ  uint32
			fd   int64
			name string
		}{c.typ, c.fd, c.name})
	}
	b := make([]byte, len(ents)*0x8C)
	for i, e := range ents {
		o := i * 0x8C
		le32(b, o, e.typ)
		le32(b, o+4, v.g.fdAddr(e.fd))
		le32(b, o+8, 1)
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

// dirHashed builds a VMFS6 hashed directory (vmfs-format.md §9.2): a 64 KiB
// header with "." and ".." and the hash table, an allocation-map block, and
// entry blocks of 14 slots.
func (v *vol) dirHashed(d *node) ([]byte, error) {
	const (
		hdrSize   = 0x10000
		slots     = 14
		entSize   = 0x120
		tableAt   = 0x5F8
		blockHdr  = 0x40
		dotAt     = 0x3B8
		dotdotAt  = 0x4D8
		versionID = 0x00F50001
	)
	md := v.g.md
	nEnt := int64(len(d.children))
	entryBlocks := max(1, (nEnt+slots-1)/slots)
	size := hdrSize + (1+entryBlocks)*md
	b := make([]byte, size)
	le32(b, 0, versionID)
	le32(b, 4, uint32(nEnt+2))
	le32(b, 8, uint32(nEnt+2))
	le32(b, 0xC, 1) // one allocation-map block, block 0
	entry := func(o int64, typ uint32, fd int64, hash uint32, name string) {
		le32(b, int(o), typ)
		le32(b, int(o)+4, v.g.fdAddr(fd))
		le32(b, int(o)+8, 1)
		le32(b, int(o)+12, hash)
		le64(b, int(o)+16, uint64(o))
		copy(b[o+24:o+24+256], name)
	}
	entry(dotAt, fdDir, d.fd, 0, ".")
	entry(dotdotAt, fdDir, v.parentOf(d).fd, 0, "..")
	modulus := uint64(16001)
	if d == v.root {
		modulus = 15973
	}
	// Allocation map (block 0).
	am := b[hdrSize : hdrSize+md]
	le16(am, 0, 0)
	le16(am, 2, 3)
	nib := func(i int64, val byte) {
		o := blockHdr + i/2
		if i%2 == 0 {
			am[o] = am[o]&0x0F | val<<4
		} else {
			am[o] = am[o]&0xF0 | val
		}
	}
	for i := int64(0); i < 2*(md-blockHdr); i++ {
		nib(i, 8) // never written
	}
	nib(0, 3)
	for k := int64(0); k < entryBlocks; k++ {
		blk := b[hdrSize+(1+k)*md : hdrSize+(2+k)*md]
		used := min(slots, nEnt-k*slots)
		le16(blk, 0, 1)
		le16(blk, 2, 1)
		le16(blk, 4, slots)
		le16(blk, 6, uint16(slots-used))
		for s := used; s < slots; s++ {
			blk[8+s/8] |= 1 << (s % 8)
		}
		val := byte(1)
		if used < slots {
			val |= 4
		}
		nib(1+k, val)
	}
	for i, c := range d.children {
		blk, slot := 1+int64(i)/slots, int64(i)%slots
		o := hdrSize + blk*md + blockHdr + slot*entSize
		h := vmfs6NameHash(c.name)
		var idx uint64
		var hash32 uint32
		if c.system && d == v.root {
			idx = uint64(vmfs6SysIndex[c.name])
		} else {
			idx, hash32 = h%modulus, uint32(h)
		}
		loc := tableAt + int(idx)*4
		if binary.LittleEndian.Uint32(b[loc:]) != 0 {
			return nil, fmt.Errorf("testimages: directory %q: hash index %d of %q is taken (link groups are not generated): rename the file", "/"+d.path, idx, c.name)
		}
		le32(b, loc, uint32(1|blk<<2|slot<<24))
		entry(o, c.typ, c.fd, hash32, c.name)
	}
	return b, nil
}
