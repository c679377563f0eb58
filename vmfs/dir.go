package vmfs

import (
	"encoding/binary"
)

// dirent is one directory entry.
type dirent struct {
	name string
	typ  uint32
	addr uint32
	gen  uint32
}

// maxDirSize bounds the directory files we read.
const maxDirSize = 256 << 20

// lookup finds name in directory dir.
func (v *Volume) lookup(dir *inode, name string) (dirent, error) {
	if dir.size() > maxDirSize {
		return dirent{}, dir.errorf(ErrCorrupt, "directory", -1, "%d bytes (more than %d)", dir.size(), maxDirSize)
	}
	if v.ver >= 6 {
		return v.hashLookup(dir, name)
	}
	var found *dirent
	err := v.linearScan(dir, func(e dirent) bool {
		if e.name == name {
			found = &e
			return false
		}
		return true
	})
	if err != nil {
		return dirent{}, err
	}
	if found == nil {
		return dirent{}, &Error{Vol: -1, DevOff: -1, Msg: "not found", Err: ErrNotFound}
	}
	return *found, nil
}

// list returns the entries of dir without "." and "..".
func (v *Volume) list(dir *inode) ([]dirent, error) {
	if dir.size() > maxDirSize {
		return nil, dir.errorf(ErrCorrupt, "directory", -1, "%d bytes (more than %d)", dir.size(), maxDirSize)
	}
	var out []dirent
	if v.ver >= 6 {
		return v.hashList(dir)
	}
	err := v.linearScan(dir, func(e dirent) bool {
		if e.name != "." && e.name != ".." {
			out = append(out, e)
		}
		return true
	})
	return out, err
}

// VMFS3/5 linear directory (§9.1).
const (
	linEntrySize   = 0x8C
	linNameOff     = 0x0C
	linNameSize    = 128
	linChunkEntrys = 512
)

func parseLinearEntry(b []byte) dirent {
	return dirent{typ: u32(b, 0), addr: u32(b, 4), gen: u32(b, 8), name: cstr(b[linNameOff : linNameOff+linNameSize])}
}

// linearScan calls fn for every used entry of a VMFS3/5 directory until fn
// returns false.
func (v *Volume) linearScan(dir *inode, fn func(dirent) bool) error {
	n := dir.size() / linEntrySize
	const chunk = linChunkEntrys * linEntrySize
	for c := int64(0); c*linChunkEntrys < n; c++ {
		key := cacheKey{kind: ckDirChunk, a: uint64(dir.addr), b: uint64(c)}
		var b []byte
		if x, ok := v.cache.get(key); ok {
			b = x.([]byte)
		} else {
			b = make([]byte, min(chunk, n*linEntrySize-c*chunk))
			if err := dir.fill(b, c*chunk, 0, false); err != nil {
				return err
			}
			v.cache.put(key, b, int64(len(b)))
		}
		for i := 0; i+linEntrySize <= len(b); i += linEntrySize {
			e := parseLinearEntry(b[i:])
			if e.addr == 0 || e.name == "" {
				continue
			}
			if !fn(e) {
				return nil
			}
		}
	}
	return nil
}

// VMFS6 hashed directory (§9.2).
const (
	hdHeaderSize     = 0x10000
	hdVersion        = 0x00F50001
	hdVersionAlt     = 0x00FDC001
	hdNumEntries     = 0x004
	hdNumMapBlocks   = 0x00C
	hdMapBlocks      = 0x010
	hdMaxMapBlocks   = 128
	hdDot            = 0x3B8
	hdDotDot         = 0x4D8
	hdHashTable      = 0x5F8
	hdHashSlots      = 16001
	hdRootSlots      = 15973
	hdBlockHeader    = 0x40
	hdEntrySize      = 0x120
	hdEntryNameOff   = 0x18
	hdEntryNameSize  = 256
	hdLinkSize       = 0x54
	hdLinksPerGroup  = 12
	hdBlockEntries   = 1
	hdBlockLinks     = 2
	hdBlockAllocMap  = 3
	hdSlotBitmapOff  = 8
	hdSlotBitmapSize = 56
	hashSalt         = 0x739A75C28E61B017
	maxLinkGroups    = 1 << 16
)

// rootSysIndex holds the fixed hash-table slots of the root system files.
var rootSysIndex = map[string]uint32{
	".fbb.sf": 0x3E66, ".fdc.sf": 0x3E67, ".pbc.sf": 0x3E68, ".sbc.sf": 0x3E69, ".vh.sf": 0x3E6A,
	".pb2.sf": 0x3E6B, ".sdd.sf": 0x3E6C, ".jbc.sf": 0x3E6D, ".unmap.sf": 0x3E6E, ".dfd.sf": 0x3E6F,
}

// NameHash returns the 64-bit hash VMFS6 gives a directory-entry name
// (§9.2): a 256-byte key (the name, zero padding, the salt
// 0x739A75C28E61B017 at every 8-byte boundary from the first one past the
// name up to byte 127) hashed as 32 little-endian quads with Bob Jenkins'
// lookup8 mixing (public domain).
func NameHash(name string) uint64 {
	var key [256]byte
	n := copy(key[:255], name)
	for o := (n + 8) &^ 7; o+8 <= 128; o += 8 {
		binary.LittleEndian.PutUint64(key[o:], hashSalt)
	}
	var q [32]uint64
	for i := range q {
		q[i] = binary.LittleEndian.Uint64(key[8*i:])
	}
	a, b, c := uint64(42), uint64(42), uint64(0x9E3779B97F4A7C13)
	for i := 0; i+3 <= 30; i += 3 {
		a += q[i]
		b += q[i+1]
		c += q[i+2]
		a, b, c = mix64(a, b, c)
	}
	c += 32
	a += q[30]
	b += q[31]
	_, _, c = mix64(a, b, c)
	return c
}

func mix64(a, b, c uint64) (uint64, uint64, uint64) {
	a = (a - b - c) ^ (c >> 43)
	b = (b - c - a) ^ (a << 9)
	c = (c - a - b) ^ (b >> 8)
	a = (a - b - c) ^ (c >> 38)
	b = (b - c - a) ^ (a << 23)
	c = (c - a - b) ^ (b >> 5)
	a = (a - b - c) ^ (c >> 35)
	b = (b - c - a) ^ (a << 49)
	c = (c - a - b) ^ (b >> 11)
	a = (a - b - c) ^ (c >> 12)
	b = (b - c - a) ^ (a << 18)
	c = (c - a - b) ^ (b >> 22)
	return a, b, c
}

// hashIndex returns the hash-table slot of name in a directory.
func hashIndex(name string, root bool) uint32 {
	if root {
		if i, ok := rootSysIndex[name]; ok {
			return i
		}
		return uint32(NameHash(name) % hdRootSlots)
	}
	return uint32(NameHash(name) % hdHashSlots)
}

// hdHeader is the decoded head of a hashed directory.
type hdHeader struct {
	raw        []byte // the whole 64 KiB header
	numEntries uint32
	mapBlocks  []uint32
}

func parseHDHeader(b []byte) (*hdHeader, error) {
	if len(b) < hdHeaderSize {
		return nil, corruptf("directory header", -1, "%d bytes, need %d", len(b), hdHeaderSize)
	}
	if ver := u32(b, 0); ver != hdVersion && ver != hdVersionAlt {
		// 0x00Fxxxxx looks like a directory version this reader does not
		// know; anything else is not a directory header.
		if ver>>20 == 0x00F {
			return nil, fieldErr(ErrUnsupported, "directory header", "version", -1, "0x%08x is an unsupported directory version", ver)
		}
		return nil, fieldErr(ErrCorrupt, "directory header", "version", -1, "0x%08x", ver)
	}
	h := &hdHeader{raw: b, numEntries: u32(b, hdNumEntries)}
	nm := u32(b, hdNumMapBlocks)
	if nm > hdMaxMapBlocks {
		return nil, fieldErr(ErrCorrupt, "directory header", "numAllocationMapBlocks", -1, "%d", nm)
	}
	if nm == 0 {
		nm = 1 // samples list block 0; readers assume it
	}
	for i := range nm {
		h.mapBlocks = append(h.mapBlocks, u32(b, hdMapBlocks+4*int(i)))
	}
	return h, nil
}

func (v *Volume) dirHeader(dir *inode) (*hdHeader, error) {
	key := cacheKey{kind: ckDirHeader, a: uint64(dir.addr)}
	if x, ok := v.cache.get(key); ok {
		return x.(*hdHeader), nil
	}
	if dir.size() < hdHeaderSize {
		return nil, dir.errorf(ErrCorrupt, "directory", -1, "%d bytes, shorter than the %d-byte header", dir.size(), hdHeaderSize)
	}
	b := make([]byte, hdHeaderSize)
	if err := dir.fill(b, 0, 0, false); err != nil {
		return nil, err
	}
	h, err := parseHDHeader(b)
	if err != nil {
		return nil, withFile(err, dir.path, dir.addr)
	}
	v.cache.put(key, h, hdHeaderSize)
	return h, nil
}

// numBlocks returns the directory blocks the file holds.
func (v *Volume) dirBlocks(dir *inode) int64 { return (dir.size() - hdHeaderSize) / v.md }

// dirBlock returns block k of a hashed directory.
func (v *Volume) dirBlock(dir *inode, k int64) ([]byte, error) {
	if k < 0 || k >= v.dirBlocks(dir) {
		return nil, dir.errorf(ErrCorrupt, "directory", -1, "block %d outside the %d blocks of the directory", k, v.dirBlocks(dir))
	}
	key := cacheKey{kind: ckDirBlock, a: uint64(dir.addr), b: uint64(k)}
	if x, ok := v.cache.get(key); ok {
		return x.([]byte), nil
	}
	b := make([]byte, v.md)
	if err := dir.fill(b, hdHeaderSize+k*v.md, 0, false); err != nil {
		return nil, err
	}
	v.cache.put(key, b, v.md)
	return b, nil
}

func parseHashedEntry(b []byte) dirent {
	return dirent{typ: u32(b, 0), addr: u32(b, 4), gen: u32(b, 8),
		name: cstr(b[hdEntryNameOff : hdEntryNameOff+hdEntryNameSize])}
}

// entrySlots returns the entry slots of a block of md bytes.
func (v *Volume) entrySlots() int64 { return (v.md - hdBlockHeader) / hdEntrySize }
func (v *Volume) linkSlots() int64  { return (v.md - hdBlockHeader) / hdLinkSize }

// entryAt reads the entry a location word of type 1 points to.
func (v *Volume) entryAt(dir *inode, loc uint32) (dirent, error) {
	blk, slot := int64(loc>>2&0x3FFFFF), int64(loc>>24)
	if slot >= v.entrySlots() {
		return dirent{}, dir.errorf(ErrCorrupt, "directory", -1, "location 0x%08x: slot %d of %d", loc, slot, v.entrySlots())
	}
	b, err := v.dirBlock(dir, blk)
	if err != nil {
		return dirent{}, err
	}
	if t := u16(b, 2); t != hdBlockEntries {
		return dirent{}, dir.errorf(ErrCorrupt, "directory", -1, "location 0x%08x: block %d has type %d, not entries", loc, blk, t)
	}
	return parseHashedEntry(b[hdBlockHeader+slot*hdEntrySize:]), nil
}

// hashLookup finds name through the hash table and link groups, comparing
// names (§9.2).
func (v *Volume) hashLookup(dir *inode, name string) (dirent, error) {
	h, err := v.dirHeader(dir)
	if err != nil {
		return dirent{}, err
	}
	notFound := &Error{Vol: -1, DevOff: -1, Msg: "not found", Err: ErrNotFound}
	if name == "." || name == ".." {
		off := hdDot
		if name == ".." {
			off = hdDotDot
		}
		return parseHashedEntry(h.raw[off:]), nil
	}
	if len(name) > hdEntryNameSize-1 {
		return dirent{}, notFound
	}
	idx := hashIndex(name, dir.addr == v.root.addr)
	hash := NameHash(name)
	hash16 := uint16(hash >> 16)
	loc := u32(h.raw, hdHashTable+4*int(idx))
	for steps := 0; ; steps++ {
		switch loc & 3 {
		case 0:
			return dirent{}, notFound
		case 1:
			e, err := v.entryAt(dir, loc)
			if err != nil {
				return dirent{}, err
			}
			if e.name == name && e.addr != 0 {
				return e, nil
			}
			return dirent{}, notFound
		case 2:
		default:
			return dirent{}, dir.errorf(ErrUnsupported, "directory", -1, "hash slot %d: location 0x%08x of type 3 is unsupported", idx, loc)
		}
		if steps >= maxLinkGroups {
			return dirent{}, dir.errorf(ErrCorrupt, "directory", -1, "hash slot %d: more than %d link groups (a loop?)", idx, maxLinkGroups)
		}
		blk, slot := int64(loc>>2&0x3FFFFF), int64(loc>>24)
		if slot >= v.linkSlots() {
			return dirent{}, dir.errorf(ErrCorrupt, "directory", -1, "link location 0x%08x: slot %d of %d", loc, slot, v.linkSlots())
		}
		b, err := v.dirBlock(dir, blk)
		if err != nil {
			return dirent{}, err
		}
		if t := u16(b, 2); t != hdBlockLinks {
			return dirent{}, dir.errorf(ErrCorrupt, "directory", -1, "link location 0x%08x: block %d has type %d, not link groups", loc, blk, t)
		}
		g := b[hdBlockHeader+slot*hdLinkSize:]
		if hi := u16(g, 0); uint32(hi) != idx {
			return dirent{}, dir.errorf(ErrCorrupt, "directory", -1, "link group 0x%08x is for hash slot %d, not %d", loc, hi, idx)
		}
		// The used links are the first totalLinks − freeLinks; a link
		// whose hash16 matches leads to an entry (compare its name: two
		// names may share index and hash16) or to a further link group.
		used := min(hdLinksPerGroup, max(0, int(g[2])-int(g[3])))
		next := u32(g, 6+6*hdLinksPerGroup)
		follow := uint32(0)
		for i := range used {
			l, h16 := u32(g, 6+6*i), u16(g, 10+6*i)
			if h16 != hash16 {
				continue
			}
			switch l & 3 {
			case 1:
				e, err := v.entryAt(dir, l)
				if err != nil {
					return dirent{}, err
				}
				if e.name == name && e.addr != 0 {
					return e, nil
				}
			case 2:
				if follow == 0 {
					follow = l
				}
			}
		}
		if follow != 0 {
			next = follow
		}
		loc = next
	}
}

// hashList lists a hashed directory through its allocation map (§9.2).
func (v *Volume) hashList(dir *inode) ([]dirent, error) {
	h, err := v.dirHeader(dir)
	if err != nil {
		return nil, err
	}
	nblocks := v.dirBlocks(dir)
	want := int64(h.numEntries) - 2 // numEntries counts "." and ".."
	if h.numEntries < 2 {
		want = 0
	}
	if max := nblocks * v.entrySlots(); want > max {
		return nil, dir.errorf(ErrCorrupt, "directory header", -1, "%d entries in %d blocks", h.numEntries, nblocks)
	}
	var out []dirent
	perMap := 2 * (v.md - hdBlockHeader)
	for j, mb := range h.mapBlocks {
		if int64(len(out)) >= want {
			break
		}
		m, err := v.dirBlock(dir, int64(mb))
		if err != nil {
			return nil, err
		}
		if t := u16(m, 2); t != hdBlockAllocMap {
			return nil, dir.errorf(ErrCorrupt, "directory", -1, "allocation map block %d has type %d", mb, t)
		}
		for t := int64(0); t < perMap && int64(len(out)) < want; t++ {
			k := int64(j)*perMap + t
			if k >= nblocks {
				break
			}
			nib := m[hdBlockHeader+t/2]
			if t%2 == 0 {
				nib >>= 4
			}
			nib &= 0xF
			if nib&8 != 0 || nib&3 != hdBlockEntries {
				continue
			}
			b, err := v.dirBlock(dir, k)
			if err != nil {
				return nil, err
			}
			if bt := u16(b, 2); bt != hdBlockEntries {
				return nil, dir.errorf(ErrCorrupt, "directory", -1, "block %d is marked as entries in the allocation map but has type %d", k, bt)
			}
			slots := min(int64(u16(b, 4)), v.entrySlots())
			for s := int64(0); s < slots && int64(len(out)) < want; s++ {
				if b[hdSlotBitmapOff+s/8]&(1<<(s%8)) != 0 {
					continue // free
				}
				e := parseHashedEntry(b[hdBlockHeader+s*hdEntrySize:])
				if e.addr == 0 || e.name == "" || e.name == "." || e.name == ".." {
					continue
				}
				out = append(out, e)
			}
		}
	}
	return out, nil
}
