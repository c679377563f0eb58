package vmfs

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Options tune Open.
type Options struct {
	// CacheBytes bounds the metadata cache (FDs, pointer blocks, directory
	// blocks); 0 means 32 MiB.
	CacheBytes int64
	// AllowMissingExtents opens a spanned volume even when some of its
	// devices are missing; reads of the ranges they hold fail with
	// ErrMissingExtent.
	AllowMissingExtents bool
}

const defaultCacheBytes = 32 << 20

// Info describes a volume.
type Info struct {
	Version      int          `json:"version"`   // 3, 5 or 6
	FSMajor      int          `json:"fs_major"`  // FS descriptor version, e.g. 14
	FSMinor      int          `json:"fs_minor"`  // e.g. 81
	LVMMajor     int          `json:"lvm_major"` // LVM version, 0 for a bare logical volume
	LVMMinor     int          `json:"lvm_minor"`
	Local        bool         `json:"local"` // VMFS-L (FS magic 0x2FABF15F, or LVM flags bit 0)
	Label        string       `json:"label"`
	UUID         string       `json:"uuid"`       // FS UUID
	LVUUID       string       `json:"lv_uuid"`    // logical volume UUID ("" for a bare logical volume)
	Config       uint32       `json:"config"`     // FS config flags
	BlockSize    int64        `json:"block_size"` // file block size
	SubBlockSize int64        `json:"sub_block_size"`
	MDAlignment  int64        `json:"md_alignment"` // VMFS6 metadata alignment, 0 before VMFS6
	Capacity     int64        `json:"capacity"`     // logical volume size in bytes
	Extents      []ExtentInfo `json:"extents"`
	// LiveHosts lists the UUIDs of hosts with a live heartbeat: the volume
	// was mounted when the image was taken, so metadata may be mid-update
	// (a read-only reader cannot replay the host's journal).
	LiveHosts []string `json:"live_hosts"`
}

// Volume is an open VMFS volume. Its methods are safe for concurrent use.
type Volume struct {
	info       Info
	lv         *lvol
	fs         fsDesc
	ver        int
	af         addrFormat
	fsbs       int64 // file block size
	md         int64 // VMFS6 metadata alignment
	lay        fdLayout
	clusterHdr int64
	ppb        int64 // pointers per pointer block
	sfbRPC     uint64
	lfbShift   uint
	fdcStart   int64
	// rfs holds the resource files, opened on first need (resource);
	// mount opens them all before the Volume is shared.
	rfs     [numRes]resSlot
	opening []string // names of the resource files being opened (mount only)
	fdc     *resFile // = rfs[kFDC].rf, required
	root    *inode
	cache   *lru
	closers []io.Closer
}

// Open opens the volume held by devs: one device, or every extent of a
// spanned volume in any order.
func Open(devs ...Device) (*Volume, error) { return OpenOptions(Options{}, devs...) }

// OpenOptions is Open with options.
func OpenOptions(opts Options, devs ...Device) (*Volume, error) {
	if len(devs) == 0 {
		return nil, &Error{Vol: -1, DevOff: -1, Msg: "no device given", Err: ErrInvalid}
	}
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = defaultCacheBytes
	}
	v := &Volume{cache: newLRU(opts.CacheBytes)}
	var lds []*lvmDev
	for i := range devs {
		d := &devs[i]
		if d.R == nil || d.Size < 0 {
			return nil, &Error{Device: d.Name, Vol: -1, DevOff: -1, Msg: "no reader or negative size", Err: ErrInvalid}
		}
		partOff, kind, err := probe(d)
		if err != nil {
			return nil, err
		}
		if kind == entryBare {
			if len(devs) > 1 {
				return nil, &Error{Device: d.Name, Vol: -1, DevOff: -1, Err: ErrInvalid,
					Msg: "a bare logical volume (no LVM header) cannot be one extent of several"}
			}
			v.lv = &lvol{size: d.Size - partOff, segs: []segment{{lOff: 0, len: d.Size - partOff, dev: d, pOff: partOff}}}
			v.info.Extents = []ExtentInfo{{Device: d.Name, PartitionOffset: partOff, Length: d.Size - partOff}}
			break
		}
		ld, err := readLVM(d, i, partOff)
		if err != nil {
			return nil, err
		}
		lds = append(lds, ld)
	}
	if v.lv == nil {
		lv, infos, err := assemble(lds, opts.AllowMissingExtents)
		if err != nil {
			return nil, err
		}
		v.lv, v.info.Extents = lv, infos
		v.info.LVMMajor, v.info.LVMMinor = int(lds[0].meta.major), int(lds[0].meta.minor)
		v.info.LVUUID = lds[0].vol.lvID.String()
	}
	if err := v.mount(lds); err != nil {
		return nil, err
	}
	return v, nil
}

func (v *Volume) mount(lds []*lvmDev) error {
	b := make([]byte, fsDescLen)
	if v.lv.size < fsDescriptorOff+fsDescLen {
		return corruptf("FS descriptor", fsDescriptorOff, "the logical volume holds only %d bytes", v.lv.size)
	}
	if err := v.lv.readAt(b, fsDescriptorOff, "FS descriptor"); err != nil {
		return err
	}
	f, err := parseFSDesc(b)
	if err != nil {
		return err
	}
	if len(lds) > 0 && f.lvUUID != lds[0].vol.lvID {
		return fieldErr(ErrCorrupt, "FS descriptor", "LV UUID", fsDescriptorOff,
			"%s, but the LVM volume is %s (the filesystem does not belong to this logical volume)", f.lvUUID, lds[0].vol.lvID)
	}
	v.setGeometry(f)
	if len(lds) > 0 && lds[0].meta.flags&1 != 0 {
		v.info.Local = true // LVM flags bit 0: VMFS-L (dissect's c_lvm)
	}
	// Resource files open in dependency order, each on first need (§6.2,
	// §15.1): .fbb.sf first on VMFS6 (its SFB child header gives the SFB
	// geometry every block address needs), then .fdc.sf, then the rest.
	// Only .fdc.sf is required here; a broken optional file reports its
	// error when something needs it.
	if v.ver >= 6 {
		v.resource(kFBB)
	}
	if v.fdc, err = v.resource(kFDC); err != nil {
		return err
	}
	for k := range numRes {
		v.resource(k)
	}
	rootFD, err := v.loadFD(fdAddr(0, 0), "")
	if err != nil {
		return err
	}
	if v.root, err = v.newInode(rootFD, fdAddr(0, 0), "/"); err != nil {
		return err
	}
	if !isDirFD(rootFD) {
		return corruptf("root directory FD 0x00000004", -1, "type %d, not a directory", rootFD.typ)
	}
	v.readHeartbeats()
	return nil
}

// setGeometry derives the mapping parameters from the FS descriptor.
func (v *Volume) setGeometry(f fsDesc) {
	v.fs = f
	v.ver = f.version()
	v.fsbs = int64(f.fileBlockSize)
	v.info.Version = v.ver
	v.info.FSMajor, v.info.FSMinor = int(f.major), int(f.minor)
	v.info.Local = f.magic == fsMagicLocal
	v.info.Label, v.info.UUID, v.info.Config = f.label, f.uuid.String(), f.config
	v.info.BlockSize, v.info.SubBlockSize = v.fsbs, int64(f.subBlockSize)
	v.info.Capacity = v.lv.size
	if v.ver >= 6 {
		v.md = int64(f.mdAlignment)
		if v.md == 0 {
			v.md = 0x1000
		}
		v.info.MDAlignment = v.md
		v.af = addrFormat{wide: true}
		v.lay = layoutFor(6, int(v.md))
		v.clusterHdr = 2 * v.md
		v.ppb = max(64<<10, v.md) / 8
		v.sfbRPC = uint64(max(1, min(8192, (512<<20)/v.fsbs)))
		v.lfbShift = log2(uint64(v.fsbs)) + uint(f.sfbToLfbShift)
		if f.sfbToLfbShift == 0 {
			v.lfbShift = log2(uint64(v.fsbs)) + 9
		}
		v.fdcStart = roundUp(3<<20+1024*v.md, 1<<20) // §4.1, as dissect computes it
	} else {
		v.af = addrFormat{dense: f.config&configDenseSBPC != 0}
		v.lay = layoutFor(5, 0)
		v.clusterHdr = 0x400
		v.ppb = 1024
		v.fdcStart = roundUp(4<<20, v.fsbs)
	}
}

func roundUp(x, a int64) int64 { return (x + a - 1) / a * a }

// loadFD returns the FD at address addr, through the cache.
func (v *Volume) loadFD(addr uint32, path string) (*fdesc, error) {
	key := cacheKey{kind: ckFD, a: uint64(addr)}
	if x, ok := v.cache.get(key); ok {
		return x.(*fdesc), nil
	}
	what := fmt.Sprintf("file descriptor 0x%08x", addr)
	if addr&7 != akFD {
		return nil, &Error{Path: path, What: what, Vol: -1, DevOff: -1, Msg: "not an FD address", Err: ErrCorrupt}
	}
	if v.fdc == nil {
		return nil, &Error{Path: path, What: what, Vol: -1, DevOff: -1, Msg: ".fdc.sf is not open", Err: ErrCorrupt}
	}
	off, err := v.fdc.offset(fdClusterRes(addr))
	if err != nil {
		return nil, withFile(annotate(err, what), path, addr)
	}
	// Consecutive FDs may lie in non-contiguous blocks of .fdc.sf (an FD
	// may even straddle two): read through the block map.
	b := make([]byte, v.lay.size)
	if err := v.fdc.ino.fill(b, off, 1, true); err != nil {
		return nil, withFile(annotate(err, what), path, addr)
	}
	fd, err := parseFD(b, v.lay)
	if err != nil {
		return nil, err
	}
	if fd.addr != addr {
		return nil, &Error{Path: path, What: what, Vol: -1, DevOff: -1, Field: "descAddr", Err: ErrCorrupt,
			Msg: fmt.Sprintf("at .fdc.sf offset 0x%x holds 0x%08x (a free or stale FD)", off, fd.addr)}
	}
	v.cache.put(key, fd, int64(v.lay.size))
	return fd, nil
}

func isDirFD(fd *fdesc) bool {
	return fd.typ == typeDir || (fd.typ == typeSysFile && fd.mode&0o170000 == 0o040000)
}

// readHeartbeats records live heartbeat slots (§10); errors are ignored
// (the region is optional for reading).
func (v *Volume) readHeartbeats() {
	slot, n := int64(hbSlot35), int64(hbSlots35)
	if v.ver >= 6 {
		slot, n = v.md, hbSlots6
	}
	n = min(n, (v.lv.size-hbRegion)/slot)
	if n <= 0 {
		return
	}
	// Read at most 1 MiB at a time (VMFS6 slots are md bytes each).
	per := max(1, (1<<20)/slot)
	seen := map[UUID]bool{}
	for first := int64(0); first < n; first += per {
		k := min(per, n-first)
		b := make([]byte, k*slot)
		if v.lv.readAt(b, hbRegion+first*slot, "heartbeat region") != nil {
			return
		}
		for i := range k {
			s := b[i*slot:]
			if u32(s, 0) != hbLive {
				continue
			}
			owner := uuidAt(s, hbOwnerOff)
			if !seen[owner] {
				seen[owner] = true
				v.info.LiveHosts = append(v.info.LiveHosts, owner.String())
			}
		}
	}
}

// Info describes the volume.
func (v *Volume) Info() Info {
	i := v.info
	i.Extents = append([]ExtentInfo(nil), i.Extents...)
	i.LiveHosts = append([]string(nil), i.LiveHosts...)
	return i
}

// FileType is the type of a file on a VMFS volume (the FD type, §7).
type FileType uint8

const (
	TypeDir     FileType = typeDir
	TypeRegular FileType = typeRegular
	TypeSymlink FileType = typeSymlink
	TypeSystem  FileType = typeSysFile // resource files such as .fdc.sf
	TypeRDM     FileType = typeRDM     // raw device mapping: no data on the volume
)

func (t FileType) String() string {
	switch t {
	case TypeDir:
		return "dir"
	case TypeRegular:
		return "file"
	case TypeSymlink:
		return "symlink"
	case TypeSystem:
		return "system"
	case TypeRDM:
		return "rdm"
	case typeVolume:
		return "volume"
	}
	return fmt.Sprintf("FileType(%d)", uint8(t))
}

// FileInfo describes a file.
type FileInfo struct {
	Name       string   // base name ("" for the root)
	Path       string   // cleaned path relative to the root ("." for the root)
	Type       FileType //
	IsDir      bool     // a directory (including system directories such as .sdd.sf)
	Size       int64    // bytes (an RDM: the size of the LUN)
	BlockSize  int64    // per-file block size: the bytes one pointer covers
	ZLA        uint32   // address form: 1, 2, 3, 5, 0x10D0, 0x10D1
	NumBlocks  uint64   // allocated blocks per the FD
	NumTBZ     uint64   // to-be-zeroed blocks per the FD
	Mode       uint32   // permission bits as stored (may include S_IFMT bits)
	NLink      uint32
	UID, GID   uint32
	MTime      time.Time
	CTime      time.Time
	ATime      time.Time
	FD         uint32 // FD address
	Generation uint32
}

// Layout names the address form: "resident", "subblock", "blocks",
// "pointer", "double".
func (fi FileInfo) Layout() string {
	switch fi.ZLA {
	case zlaResident:
		return "resident"
	case zlaSB:
		return "subblock"
	case zlaFB:
		return "blocks"
	case zlaPB, zlaPB2:
		return "pointer"
	case zlaDouble:
		return "double"
	}
	return fmt.Sprintf("ZLA 0x%x", fi.ZLA)
}

// FileMode returns the permissions and type as an fs.FileMode.
func (fi FileInfo) FileMode() fs.FileMode {
	m := fs.FileMode(fi.Mode & 0o777)
	switch {
	case fi.IsDir:
		m |= fs.ModeDir
	case fi.Type == TypeSymlink:
		m |= fs.ModeSymlink
	case fi.Type == TypeRDM:
		m |= fs.ModeDevice
	}
	return m
}

func (v *Volume) fileInfo(ino *inode, p string) FileInfo {
	fd := ino.fd
	name := path.Base(p)
	if p == "." {
		name = ""
	}
	return FileInfo{
		Name: name, Path: p, Type: FileType(fd.typ), IsDir: isDirFD(fd),
		Size: int64(fd.size), BlockSize: int64(fd.blockSize), ZLA: fd.zla,
		NumBlocks: fd.numBlocks, NumTBZ: fd.numTBZ, Mode: fd.mode, NLink: fd.nlink,
		UID: fd.uid, GID: fd.gid,
		MTime: time.Unix(int64(fd.mtime), 0).UTC(), CTime: time.Unix(int64(fd.ctime), 0).UTC(), ATime: time.Unix(int64(fd.atime), 0).UTC(),
		FD: ino.addr, Generation: fd.generation,
	}
}

// cleanPath turns a user path into "." or "a/b".
func cleanPath(p string) string {
	c := path.Clean("/" + p)
	if c == "/" {
		return "."
	}
	return c[1:]
}

// resolve walks p from the root.
func (v *Volume) resolve(p string) (*inode, string, error) {
	cp := cleanPath(p)
	ino := v.root
	if cp == "." {
		return ino, cp, nil
	}
	cur := ""
	for _, name := range strings.Split(cp, "/") {
		if !isDirFD(ino.fd) {
			return nil, cp, &Error{Path: cur, FD: ino.addr, Vol: -1, DevOff: -1, Msg: "not a directory", Err: ErrNotDir}
		}
		next := path.Join(cur, name)
		e, err := v.lookup(ino, name)
		if err != nil {
			return nil, cp, withFile(err, next, 0)
		}
		child, err := v.inodeFor(e, next)
		if err != nil {
			return nil, cp, err
		}
		ino, cur = child, next
	}
	return ino, cp, nil
}

// inodeFor loads the FD a directory entry names and checks its generation.
func (v *Volume) inodeFor(e dirent, p string) (*inode, error) {
	fd, err := v.loadFD(e.addr, p)
	if err != nil {
		return nil, err
	}
	if fd.generation != e.gen {
		return nil, &Error{Path: p, FD: e.addr, What: "directory entry", Field: "generation", Vol: -1, DevOff: -1, Err: ErrCorrupt,
			Msg: fmt.Sprintf("%d, but the FD's generation is %d (a stale entry)", e.gen, fd.generation)}
	}
	return v.newInode(fd, e.addr, p)
}

// Stat describes the file at path p (symlinks are not followed).
func (v *Volume) Stat(p string) (FileInfo, error) {
	ino, cp, err := v.resolve(p)
	if err != nil {
		return FileInfo{}, err
	}
	return v.fileInfo(ino, cp), nil
}

// ReadDir lists the directory at path p (without "." and ".."), sorted by
// name.
func (v *Volume) ReadDir(p string) ([]FileInfo, error) {
	ino, cp, err := v.resolve(p)
	if err != nil {
		return nil, err
	}
	return v.readDir(ino, cp)
}

func (v *Volume) readDir(ino *inode, cp string) ([]FileInfo, error) {
	if !isDirFD(ino.fd) {
		return nil, &Error{Path: cp, FD: ino.addr, Vol: -1, DevOff: -1, Msg: "not a directory", Err: ErrNotDir}
	}
	ents, err := v.list(ino)
	if err != nil {
		return nil, withFile(err, cp, ino.addr)
	}
	out := make([]FileInfo, 0, len(ents))
	for _, e := range ents {
		child, err := v.inodeFor(e, path.Join(cp, e.name))
		if err != nil {
			return nil, err
		}
		out = append(out, v.fileInfo(child, path.Join(cp, e.name)))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Readlink returns the target of the symlink at p.
func (v *Volume) Readlink(p string) (string, error) {
	ino, cp, err := v.resolve(p)
	if err != nil {
		return "", err
	}
	if ino.fd.typ != typeSymlink {
		return "", &Error{Path: cp, FD: ino.addr, Vol: -1, DevOff: -1, Msg: "not a symlink", Err: ErrInvalid}
	}
	if ino.size() > 64<<10 {
		return "", ino.errorf(ErrCorrupt, "symlink", -1, "%d-byte target", ino.size())
	}
	b := make([]byte, ino.size())
	if err := ino.fill(b, 0, 0, false); err != nil {
		return "", err
	}
	return string(b), nil
}

// WalkFunc is called by Walk for every file; p is relative to the root ("."
// for the root). Returning fs.SkipDir skips a directory, fs.SkipAll stops.
type WalkFunc func(p string, info FileInfo, err error) error

// Walk calls fn for root and everything below it, in lexical order,
// entering every directory once (a directory reached twice is not entered
// again).
func (v *Volume) Walk(root string, fn WalkFunc) error {
	ino, cp, err := v.resolve(root)
	if err != nil {
		err = fn(cleanPath(root), FileInfo{}, err)
		if err == fs.SkipDir || err == fs.SkipAll {
			return nil
		}
		return err
	}
	seen := map[uint32]bool{}
	err = v.walk(ino, cp, fn, seen)
	if err == fs.SkipDir || err == fs.SkipAll {
		return nil
	}
	return err
}

func (v *Volume) walk(ino *inode, p string, fn WalkFunc, seen map[uint32]bool) error {
	fi := v.fileInfo(ino, p)
	if err := fn(p, fi, nil); err != nil || !fi.IsDir || seen[ino.addr] {
		if err == fs.SkipDir && fi.IsDir {
			return nil
		}
		return err
	}
	seen[ino.addr] = true
	ents, err := v.list(ino)
	if err != nil {
		return fn(p, fi, withFile(err, p, ino.addr))
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	for _, e := range ents {
		cp := path.Join(p, e.name)
		child, err := v.inodeFor(e, cp)
		if err != nil {
			if err := fn(cp, FileInfo{}, err); err != nil && err != fs.SkipDir {
				return err
			}
			continue
		}
		if err := v.walk(child, cp, fn, seen); err != nil {
			return err
		}
	}
	return nil
}

// File is an open file. It implements formats.Image; ReadAt and Extent are
// safe for concurrent use.
type File struct {
	v      *Volume
	ino    *inode
	info   FileInfo
	closed atomic.Bool
}

var _ formats.Image = (*File)(nil)

// Open opens the file at path p (symlinks are not followed: a symlink reads
// as its target text).
func (v *Volume) Open(p string) (*File, error) {
	ino, cp, err := v.resolve(p)
	if err != nil {
		return nil, err
	}
	return &File{v: v, ino: ino, info: v.fileInfo(ino, cp)}, nil
}

// OpenFD opens the file whose FD address is addr (as debugvmfs's
// cat '<0x…>'), skipping the directory tree and the generation check.
func (v *Volume) OpenFD(addr uint32) (*File, error) {
	p := fmt.Sprintf("<0x%08x>", addr)
	fd, err := v.loadFD(addr, p)
	if err != nil {
		return nil, err
	}
	ino, err := v.newInode(fd, addr, p)
	if err != nil {
		return nil, err
	}
	return &File{v: v, ino: ino, info: v.fileInfo(ino, p)}, nil
}

// Size returns the file length.
func (f *File) Size() int64 { return f.ino.size() }

// Stat describes the file.
func (f *File) Stat() FileInfo { return f.info }

// ReadAt reads len(p) bytes at off; a read ending past Size returns the
// bytes before it and io.EOF. Holes and TBZ blocks read as zeros without a
// device read; physically contiguous blocks are read with one device read
// (split only at extent boundaries of the volume).
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, fs.ErrClosed
	}
	size := f.ino.size()
	if off < 0 {
		return 0, &Error{Path: f.info.Path, FD: f.ino.addr, Vol: -1, DevOff: -1, Msg: fmt.Sprintf("negative offset %d", off), Err: ErrInvalid}
	}
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	if err := f.ino.fill(p[:n], off, 0, false); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Locate says where the file's bytes [off, off+n) — or a prefix of them —
// are stored on the devices (formats.Locator): R is the Device.R of the
// device holding them. Holes, TBZ blocks, resident data and raw device
// mappings are not located (R nil); a located run ends at the first block
// that is not physically contiguous with the one before, or at a device
// boundary.
func (f *File) Locate(off, n int64) (formats.Location, error) {
	if f.closed.Load() {
		return formats.Location{}, fs.ErrClosed
	}
	size := f.ino.size()
	if off < 0 || n <= 0 || off >= size {
		return formats.Location{}, &Error{Path: f.info.Path, FD: f.ino.addr, Vol: -1, DevOff: -1, Msg: fmt.Sprintf("locate [%d, +%d) of a %d-byte file", off, n, size), Err: formats.ErrOutOfRange}
	}
	return f.ino.locate(off, min(n, size-off))
}

// Extent returns the longest run of one kind starting at off (merging at
// most 1024 block-map runs), from metadata only: Data (stored blocks, and
// resident data), Zero (TBZ blocks) or Hole (unallocated).
func (f *File) Extent(off int64) (formats.Extent, error) {
	if f.closed.Load() {
		return formats.Extent{}, fs.ErrClosed
	}
	return f.ino.extent(off)
}

// Allocated returns the bytes of the file in Data extents.
func (f *File) Allocated() (int64, error) {
	if f.ino.isRDM() || f.Size() == 0 {
		return 0, nil
	}
	return formats.Allocated(f)
}

// Close marks the file closed; later reads fail with fs.ErrClosed.
func (f *File) Close() error {
	if f.closed.Swap(true) {
		return fs.ErrClosed
	}
	return nil
}
