package vmfs

// FS descriptor at logical 0x200000 (§4).
const (
	fsDescLen = 0x154 // bytes decoded

	configDenseSBPC = 0x4
)

// fsDesc is the FS descriptor ("superblock", §4).
type fsDesc struct {
	magic               uint32
	major               uint32
	minor               uint8
	uuid                UUID
	config              uint32
	label               string
	diskBlockSize       uint32
	fileBlockSize       uint64
	creationTime        uint32
	snapID              uint32
	lvUUID              UUID
	lvSnapID            uint32
	fdcClusterGroupOff  uint32
	fdcClustersPerGroup uint32
	subBlockSize        uint32
	pb2VolAddr          uint64
	pb2FDAddr           uint32
	hostUUID            UUID
	sddVolAddr          uint64
	sddFDAddr           uint32
	physDiskBlockSize   uint32
	mdAlignment         uint32
	sfbToLfbShift       uint16
	ptrBlockShift       uint16
	sfbAddrBits         uint16
	tbzGranularity      uint32
	journalBlockSize    uint32
}

// version returns 3, 5 or 6 from the FS major version (§4).
func (f *fsDesc) version() int {
	switch {
	case f.major < 14:
		return 3
	case f.major < 24:
		return 5
	}
	return 6
}

func parseFSDesc(b []byte) (fsDesc, error) {
	const what = "FS descriptor"
	var f fsDesc
	if len(b) < fsDescLen {
		return f, corruptf(what, fsDescriptorOff, "%d bytes, need %d", len(b), fsDescLen)
	}
	f.magic = u32(b, 0x00)
	if f.magic != fsMagic && f.magic != fsMagicLocal {
		return f, fieldErr(ErrCorrupt, what, "magic", fsDescriptorOff, "0x%08x, want 0x%08x", f.magic, uint32(fsMagic))
	}
	f.major = u32(b, 0x04)
	f.minor = b[0x08]
	f.uuid = uuidAt(b, 0x09)
	f.config = u32(b, 0x19)
	f.label = cstr(b[0x1D : 0x1D+128])
	f.diskBlockSize = u32(b, 0x9D)
	f.fileBlockSize = u64(b, 0xA1)
	f.creationTime = u32(b, 0xA9)
	f.snapID = u32(b, 0xAD)
	f.lvUUID = uuidAt(b, 0xB1)
	f.lvSnapID = u32(b, 0xC1)
	f.fdcClusterGroupOff = u32(b, 0xD1)
	f.fdcClustersPerGroup = u32(b, 0xD5)
	f.subBlockSize = u32(b, 0xD9)
	f.pb2VolAddr = u64(b, 0xE1)
	f.pb2FDAddr = u32(b, 0xE9)
	f.hostUUID = uuidAt(b, 0xED)
	f.sddVolAddr = u64(b, 0x105)
	f.sddFDAddr = u32(b, 0x10D)
	f.physDiskBlockSize = u32(b, 0x130)
	f.mdAlignment = u32(b, 0x134)
	f.sfbToLfbShift = u16(b, 0x138)
	f.ptrBlockShift = u16(b, 0x13E)
	f.sfbAddrBits = u16(b, 0x140)
	f.tbzGranularity = u32(b, 0x144)
	f.journalBlockSize = u32(b, 0x148)
	if f.major < 3 || f.major > 99 {
		return f, fieldErr(ErrUnsupported, what, "majorVersion", fsDescriptorOff, "FS version %d.%d", f.major, f.minor)
	}
	if !isPow2(f.fileBlockSize) || f.fileBlockSize < 4096 || f.fileBlockSize > 1<<30 {
		return f, fieldErr(ErrCorrupt, what, "fileBlockSize", fsDescriptorOff, "%d", f.fileBlockSize)
	}
	if !isPow2(uint64(f.subBlockSize)) || f.subBlockSize < 512 || uint64(f.subBlockSize) > f.fileBlockSize {
		return f, fieldErr(ErrCorrupt, what, "subBlockSize", fsDescriptorOff, "%d", f.subBlockSize)
	}
	if f.fdcClustersPerGroup == 0 || f.fdcClustersPerGroup > 1<<16 {
		return f, fieldErr(ErrCorrupt, what, "fdcClustersPerGroup", fsDescriptorOff, "%d", f.fdcClustersPerGroup)
	}
	if f.fdcClusterGroupOff > 1<<30 {
		return f, fieldErr(ErrCorrupt, what, "fdcClusterGroupOffset", fsDescriptorOff, "0x%x", f.fdcClusterGroupOff)
	}
	if f.version() == 6 {
		if md := f.mdAlignment; md != 0 && (!isPow2(uint64(md)) || md < 4096 || md > 1<<20) {
			return f, fieldErr(ErrUnsupported, what, "mdAlignment", fsDescriptorOff, "0x%x", md)
		}
		if ps := f.ptrBlockShift; ps != 0 && (ps > 30 || 1<<ps != max(64<<10, uint64(max(f.mdAlignment, 0x1000)))) {
			return f, fieldErr(ErrUnsupported, what, "ptrBlockShift", fsDescriptorOff,
				"%d: pointer blocks of other than max(64 KiB, mdAlignment) bytes are unsupported", ps)
		}
		if f.sfbToLfbShift > 16 {
			return f, fieldErr(ErrCorrupt, what, "sfbToLfbShift", fsDescriptorOff, "%d", f.sfbToLfbShift)
		}
	}
	return f, nil
}

// resHeader is the header at offset 0 of a resource file (§6.1).
type resHeader struct {
	rpc, cpg, cgOffset, resSize, cgSize uint32
	numResLo, numGroups, numResHi       uint32
	signature, version, flags           uint32
	childMetaOffset                     uint32
	// parent geometry of a nested (child) header: VMFS6 SFB inside LFB.
	parentRPC, parentCPG, parentCGSize uint32
}

// Resource header flags (§6.1; meaning from dissect.vmfs' comments).
const resFlagHasParent = 0x2

const resHeaderLen = 0x44

func parseResHeader(b []byte) (resHeader, error) {
	var h resHeader
	if len(b) < resHeaderLen {
		return h, corruptf("resource header", -1, "%d bytes, need %d", len(b), resHeaderLen)
	}
	h.rpc = u32(b, 0x00)
	h.cpg = u32(b, 0x04)
	h.cgOffset = u32(b, 0x08)
	h.resSize = u32(b, 0x0C)
	h.cgSize = u32(b, 0x10)
	h.numResLo = u32(b, 0x14)
	h.numGroups = u32(b, 0x18)
	h.numResHi = u32(b, 0x1C)
	h.signature = u32(b, 0x20)
	h.version = u32(b, 0x24)
	h.flags = u32(b, 0x28)
	h.childMetaOffset = u32(b, 0x34)
	h.parentRPC = u32(b, 0x38)
	h.parentCPG = u32(b, 0x3C)
	h.parentCGSize = u32(b, 0x40)
	return h, nil
}

// File types (FD type field, §7).
const (
	typeVolume  = 1
	typeDir     = 2
	typeRegular = 3
	typeSymlink = 4
	typeSysFile = 5
	typeRDM     = 6
)

// ZLA values (§8).
const (
	zlaFB       = 1
	zlaSB       = 2
	zlaPB       = 3
	zlaPB2      = 5
	zlaDouble   = 0x10D0
	zlaResident = 0x10D1
)

const (
	fdLockType = 0x10C00001
	fdSize35   = 0x800
	fdPtrs35   = 256
)

// fdLayout describes where the parts of an FD lie for one volume.
type fdLayout struct {
	size     int // FD bytes
	meta     int // metadata offset
	resident int // resident data offset
	resLen   int // resident data capacity
	ptrs     int // pointer array offset
	numPtrs  int
	ptrBytes int // 4 (VMFS3/5) or 8 (VMFS6)
}

func layoutFor(version int, md int) fdLayout {
	if version < 6 {
		return fdLayout{size: fdSize35, meta: 0x200, resident: 0x400, resLen: 0x400, ptrs: 0x400, numPtrs: fdPtrs35, ptrBytes: 4}
	}
	l := fdLayout{size: 2 * md, meta: md, resident: md + 0x200, resLen: md - 0x200, ptrBytes: 8}
	if md <= 0x1000 {
		l.numPtrs = 320
	} else {
		l.numPtrs = md / 16
	}
	l.ptrs = l.size - l.numPtrs*8
	return l
}

// fdesc is a decoded file descriptor (§7). It is immutable once decoded.
type fdesc struct {
	lockType   uint32
	lockAddr   uint64
	addr       uint32 // descAddr
	generation uint32
	nlink      uint32
	typ        uint32
	flags      uint32
	size       uint64
	blockSize  uint64
	numBlocks  uint64
	mtime      uint32
	ctime      uint32
	atime      uint32
	uid, gid   uint32
	mode       uint32
	zla        uint32
	numTBZ     uint64
	numCOW     uint64
	numPB      uint32
	signature  uint32
	tbzShift   uint32
	parent     uint32
	offShift   uint8
	numLFB     uint32
	ptrs       []uint64
	resident   []byte // the resident-data area (whole capacity)
}

// parseFD decodes an FD of layout l from b (which it does not keep).
func parseFD(b []byte, l fdLayout) (*fdesc, error) {
	if len(b) < l.size {
		return nil, corruptf("file descriptor", -1, "%d bytes, need %d", len(b), l.size)
	}
	m := b[l.meta:]
	f := &fdesc{
		lockType:   u32(b, 0),
		lockAddr:   u64(b, 4),
		addr:       u32(m, 0x00),
		generation: u32(m, 0x04),
		nlink:      u32(m, 0x08),
		typ:        u32(m, 0x0C),
		flags:      u32(m, 0x10),
		size:       u64(m, 0x14),
		blockSize:  u64(m, 0x1C),
		numBlocks:  u64(m, 0x24),
		mtime:      u32(m, 0x2C),
		ctime:      u32(m, 0x30),
		atime:      u32(m, 0x34),
		uid:        u32(m, 0x38),
		gid:        u32(m, 0x3C),
		mode:       u32(m, 0x40),
		zla:        u32(m, 0x44),
		numTBZ:     uint64(u32(m, 0x48)) | uint64(u32(m, 0x54))<<32,
		numCOW:     uint64(u32(m, 0x4C)) | uint64(u32(m, 0x58))<<32,
		numPB:      u32(m, 0x5C),
		signature:  u32(m, 0x64),
		tbzShift:   u32(m, 0x6C),
		parent:     u32(m, 0x70),
		offShift:   m[0x89],
		numLFB:     u32(m, 0x8C),
	}
	if f.zla == zlaResident {
		f.resident = append([]byte(nil), b[l.resident:l.resident+l.resLen]...)
		return f, nil
	}
	f.ptrs = make([]uint64, l.numPtrs)
	for i := range f.ptrs {
		if l.ptrBytes == 4 {
			f.ptrs[i] = uint64(u32(b, l.ptrs+4*i))
		} else {
			f.ptrs[i] = u64(b, l.ptrs+8*i)
		}
	}
	return f, nil
}

// Heartbeat slot (§10).
const (
	hbRegion    = 0x300000
	hbSlots35   = 2048
	hbSlot35    = 512
	hbSlots6    = 1024
	hbFree      = 0xABCDEF01
	hbLive      = 0xABCDEF02
	hbOwnerOff  = 0x1C
	hbStampOff  = 0x14
	hbMinLength = 0x2C
)
