package vmfs

import (
	"fmt"
	"sort"
	"strings"
)

// LVM layout (§3).
const (
	devMetaLen       = 0xD6  // bytes of the device header we decode
	devMetaSize35    = 0x200 // devMeta block on LVM3/5; LVM6 uses mdAlignment
	volDescSize      = 0x200
	maxVolumes       = 512
	sdTableRel       = 0x7E000 // device-name table, after devMeta
	sdNameSize       = 256
	peMapRel         = 0x80000 // first PE bitmap, after devMeta
	peBitmapSize35   = 0x400
	peSlots          = 8192
	peEntrySize      = 128
	peUnit           = 256 << 20 // firstPE/lastPE unit
	maxPEMaps        = 8         // pairs per metadata region
	maxExtRegions    = 64        // extension regions followed
	maxDevs          = 4096      // devices per volume we accept
	defaultLVMMDSize = 0x1000
)

// devMeta is the LVM device header at 1 MiB of every device (§3.1).
type devMeta struct {
	major, minor  uint32
	diskBlockSize uint32
	totalBytes    uint64
	numVolumes    uint32
	numPEs        uint32
	lastPEIndex   uint32
	generation    uint64
	dataOffset    uint64
	devID         UUID
	numPEMaps     uint32
	extOffset     uint64
	mdAlignment   uint32
	flags         uint32
	diskID        string
}

// parseDevMeta decodes an LVM device header (§3.1).
func parseDevMeta(b []byte) (devMeta, error) {
	var m devMeta
	if len(b) < devMetaLen {
		return m, corruptf("LVM device header", -1, "%d bytes, need %d", len(b), devMetaLen)
	}
	if u32(b, 0) != lvmMagic {
		return m, fieldErr(ErrCorrupt, "LVM device header", "magic", -1, "0x%08x, want 0x%08x", u32(b, 0), uint32(lvmMagic))
	}
	m.major, m.minor = u32(b, 0x04), u32(b, 0x08)
	idLen := int(b[0x0D])
	if idLen > 44 {
		idLen = 44
	}
	m.diskID = cstr(b[0x0C+0x22 : 0x0C+0x22+idLen])
	m.diskBlockSize = u32(b, 0x5A)
	m.totalBytes = u64(b, 0x5E)
	m.numVolumes = u32(b, 0x66)
	m.numPEs = u32(b, 0x6A)
	m.lastPEIndex = u32(b, 0x6E)
	m.generation = u64(b, 0x72)
	m.dataOffset = u64(b, 0x7A)
	m.devID = uuidAt(b, 0x82)
	m.numPEMaps = u32(b, 0xBE)
	m.extOffset = u64(b, 0xC2)
	m.mdAlignment = u32(b, 0xCA)
	m.flags = u32(b, 0xD2)
	switch m.major {
	case 3, 5, 6:
	default:
		return m, fieldErr(ErrUnsupported, "LVM device header", "majorVersion", -1, "LVM version %d.%d", m.major, m.minor)
	}
	if m.numVolumes == 0 || m.numVolumes > maxVolumes {
		return m, fieldErr(ErrCorrupt, "LVM device header", "numVolumes", -1, "%d volumes", m.numVolumes)
	}
	if m.numPEMaps > maxPEMaps {
		return m, fieldErr(ErrCorrupt, "LVM device header", "numPEMaps", -1, "%d maps (at most %d per region)", m.numPEMaps, maxPEMaps)
	}
	if m.major == 6 && m.mdAlignment != 0 && (!isPow2(uint64(m.mdAlignment)) || m.mdAlignment < devMetaSize35 || m.mdAlignment > 1<<20) {
		return m, fieldErr(ErrCorrupt, "LVM device header", "mdAlignment", -1, "0x%x", m.mdAlignment)
	}
	return m, nil
}

// headerSize is H of §3.2: the size of the devMeta block.
func (m *devMeta) headerSize() int64 {
	if m.major == 6 {
		if m.mdAlignment == 0 {
			return defaultLVMMDSize
		}
		return int64(m.mdAlignment)
	}
	return devMetaSize35
}

func (m *devMeta) bitmapSize() int64 {
	return max(peBitmapSize35, m.headerSize()*boolInt(m.major == 6))
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// volDesc is one volume-table entry (§3.3).
type volDesc struct {
	logicalSize  uint64
	generation   uint64
	state        uint32
	name         string
	lvID         UUID
	snapID       uint32
	volumeID     uint32
	numPEs       uint32
	firstPE      uint64
	lastPE       uint64
	numDevs      uint32
	consumedPEs  uint32
	creationTime uint64
}

func parseVolDesc(b []byte) (volDesc, error) {
	var v volDesc
	if len(b) < volDescSize {
		return v, corruptf("LVM volume descriptor", -1, "%d bytes, need %d", len(b), volDescSize)
	}
	v.logicalSize = u64(b, 0x00)
	v.generation = u64(b, 0x08)
	v.state = u32(b, 0x10)
	v.name = cstr(b[0x14 : 0x14+64])
	v.lvID = uuidAt(b, 0x54)
	v.snapID = u32(b, 0x64)
	v.creationTime = u64(b, 0x68)
	v.volumeID = u32(b, 0x70)
	v.numPEs = u32(b, 0x74)
	v.firstPE = u64(b, 0x78)
	v.lastPE = u64(b, 0x80)
	v.numDevs = u32(b, 0x90)
	v.consumedPEs = u32(b, 0x110)
	return v, nil
}

// peEntry is one PE-table slot (§3.4).
type peEntry struct {
	used     uint8
	peID     uint32
	volumeID uint32
	pOffset  uint64
	lOffset  uint64
	length   uint64
	version  uint32
}

func parsePE(b []byte) (peEntry, error) {
	var p peEntry
	if len(b) < 0x25 {
		return p, corruptf("LVM PE entry", -1, "%d bytes, need %d", len(b), 0x25)
	}
	p.used = b[0]
	p.peID = u32(b, 0x01)
	p.volumeID = u32(b, 0x05)
	p.pOffset = u64(b, 0x09)
	p.lOffset = u64(b, 0x11)
	p.length = u64(b, 0x19)
	p.version = u32(b, 0x21)
	return p, nil
}

// lvmDev is one device of an LVM volume, as read from its headers.
type lvmDev struct {
	dev     *Device
	index   int // position in the argument list
	partOff int64
	meta    devMeta
	vol     volDesc // the descriptor of the volume the device belongs to
	pes     []peEntry
	sdNames []string // device-name table (first device only)
}

// readLVM reads the LVM headers of d, whose partition starts at partOff.
func readLVM(d *Device, index int, partOff int64) (*lvmDev, error) {
	base := partOff + lvmHeaderOffset
	hb := make([]byte, devMetaLen)
	if err := readDev(d, hb, base, "LVM device header"); err != nil {
		return nil, err
	}
	m, err := parseDevMeta(hb)
	if err != nil {
		return nil, devErr(err, d, base)
	}
	ld := &lvmDev{dev: d, index: index, partOff: partOff, meta: m}
	H := m.headerSize()
	n := int64(m.numVolumes)
	if m.major == 6 {
		n = 1
	}
	vt := make([]byte, n*volDescSize)
	if err := readDev(d, vt, base+H, "LVM volume table"); err != nil {
		return nil, err
	}
	found := false
	for i := range n {
		vd, _ := parseVolDesc(vt[i*volDescSize:])
		if vd.lvID.IsZero() || vd.logicalSize == 0 {
			continue
		}
		if found {
			return nil, &Error{What: "LVM volume table", Vol: -1, Device: d.Name, DevOff: base + H + i*volDescSize,
				Msg: "more than one logical volume on a device", Err: ErrUnsupported}
		}
		ld.vol = vd
		found = true
	}
	if !found {
		return nil, &Error{What: "LVM volume table", Vol: -1, Device: d.Name, DevOff: base + H, Msg: "no logical volume", Err: ErrCorrupt}
	}
	if err := ld.readPEs(); err != nil {
		return nil, err
	}
	// The device-name table is only meaningful on the first device.
	if ld.vol.firstPE == 0 && ld.vol.numDevs > 1 && ld.vol.numDevs <= maxDevs {
		nd := int64(ld.vol.numDevs)
		tb := make([]byte, nd*sdNameSize)
		if readDev(d, tb, base+H+sdTableRel, "LVM device-name table") == nil {
			for i := range nd {
				ld.sdNames = append(ld.sdNames, cstr(tb[i*sdNameSize:(i+1)*sdNameSize]))
			}
		}
	}
	return ld, nil
}

func devErr(err error, d *Device, off int64) error {
	if e, ok := err.(*Error); ok {
		e.Device, e.DevOff = d.Name, off
	}
	return err
}

// readPEs collects the used PE entries of the device's volume from every PE
// map (§3.2), following extension regions. Devices without any PE entry fall
// back to the linear mapping of the volume descriptor (what vmfs-tools does).
func (ld *lvmDev) readPEs() error {
	d, m := ld.dev, &ld.meta
	H := m.headerSize()
	bms := m.bitmapSize()
	pairSize := bms + peSlots*peEntrySize
	remaining := int64(m.numPEs)
	if remaining > peSlots*maxPEMaps*maxExtRegions {
		return &Error{What: "LVM device header", Field: "numPEs", Vol: -1, Device: d.Name, DevOff: ld.partOff + lvmHeaderOffset,
			Msg: fmt.Sprintf("%d PE entries", m.numPEs), Err: ErrCorrupt}
	}
	readPairs := func(region, nmaps int64) error {
		for i := int64(0); i < nmaps && remaining > 0; i++ {
			pair := region + H + peMapRel + i*pairSize
			bm := make([]byte, bms)
			if err := readDev(d, bm, pair, "LVM PE bitmap"); err != nil {
				return err
			}
			// Read the slots the bitmap marks, and at least as many as
			// are still expected (a writer may leave the bitmap empty).
			last := int64(-1)
			for j := int64(0); j < peSlots && j < bms*8; j++ {
				if bm[j/8]&(1<<(j%8)) != 0 {
					last = j
				}
			}
			nslots := min(max(last+1, remaining), peSlots)
			tbl := make([]byte, nslots*peEntrySize)
			if err := readDev(d, tbl, pair+bms, "LVM PE table"); err != nil {
				return err
			}
			for j := range nslots {
				pe, _ := parsePE(tbl[j*peEntrySize:])
				marked := j < bms*8 && bm[j/8]&(1<<(j%8)) != 0
				if (!marked && pe.used == 0) || pe.length == 0 {
					continue
				}
				remaining--
				if pe.volumeID == ld.vol.volumeID {
					ld.pes = append(ld.pes, pe)
				}
			}
		}
		return nil
	}
	if err := readPairs(ld.partOff+lvmHeaderOffset, int64(max(m.numPEMaps, 1))); err != nil {
		return err
	}
	// Extension regions: {u32 magic, u32 numPEMaps, u64 dataOffset, u64
	// next}, pairs at ext + H + 0x80000 (source only).
	eb := make([]byte, 24)
	for k, ext := 0, m.extOffset; k < maxExtRegions && ext != 0 && remaining > 0; k++ {
		off := ld.partOff + int64(min(ext, 1<<62))
		if err := readDev(d, eb, off, "LVM extension header"); err != nil {
			return err
		}
		if u32(eb, 0) != lvmMagic {
			return &Error{What: "LVM extension header", Field: "magic", Vol: -1, Device: d.Name, DevOff: off, Msg: fmt.Sprintf("0x%08x", u32(eb, 0)), Err: ErrCorrupt}
		}
		if err := readPairs(off, int64(min(max(u32(eb, 4), 1), maxPEMaps))); err != nil {
			return err
		}
		ext = u64(eb, 16)
	}
	if len(ld.pes) == 0 && ld.vol.lastPE >= ld.vol.firstPE && ld.vol.lastPE < 1<<32 {
		ld.pes = []peEntry{{used: 1, volumeID: ld.vol.volumeID, pOffset: m.dataOffset,
			lOffset: ld.vol.firstPE * peUnit, length: (ld.vol.lastPE - ld.vol.firstPE + 1) * peUnit}}
	}
	sort.Slice(ld.pes, func(i, j int) bool { return ld.pes[i].lOffset < ld.pes[j].lOffset })
	return nil
}

// segment maps [lOff, lOff+len) of the logical volume to dev at pOff; dev
// == nil marks a missing extent.
type segment struct {
	lOff, len int64
	dev       *Device
	pOff      int64
	missing   string // description of the missing extent
}

// lvol is the logical volume: sorted, contiguous segments from 0 to size.
type lvol struct {
	size int64
	segs []segment
}

// ExtentInfo describes one device of a volume.
type ExtentInfo struct {
	Device          string `json:"device"`           // Device.Name
	PartitionOffset int64  `json:"partition_offset"` // start of the VMFS partition on the device
	DeviceID        string `json:"device_id"`        // LVM device UUID ("" for a bare logical volume)
	DiskID          string `json:"disk_id"`          // SCSI disk id recorded by the LVM
	Logical         int64  `json:"logical"`          // first logical byte the device holds
	Length          int64  `json:"length"`           // logical bytes the device holds
	Missing         bool   `json:"missing"`          // the device was not given (Options.AllowMissingExtents)
}

// assemble builds the logical volume from the LVM devices (§3.5).
func assemble(devs []*lvmDev, allowMissing bool) (*lvol, []ExtentInfo, error) {
	first := devs[0]
	key := func(d *lvmDev) string { return fmt.Sprintf("%s/%d", d.vol.lvID, d.vol.snapID) }
	for _, d := range devs[1:] {
		if key(d) != key(first) {
			return nil, nil, &Error{Vol: -1, DevOff: -1, Err: ErrInvalid,
				Msg: fmt.Sprintf("devices belong to different volumes: %s holds %s, %s holds %s", first.dev.Name, key(first), d.dev.Name, key(d))}
		}
		if d.meta.devID == first.meta.devID && !d.meta.devID.IsZero() {
			return nil, nil, &Error{Vol: -1, DevOff: -1, Err: ErrInvalid,
				Msg: fmt.Sprintf("%s and %s are the same LVM device %s", first.dev.Name, d.dev.Name, d.meta.devID)}
		}
		if d.vol.logicalSize != first.vol.logicalSize {
			return nil, nil, &Error{What: "LVM volume descriptor", Field: "logicalSize", Vol: -1, DevOff: -1, Err: ErrCorrupt,
				Msg: fmt.Sprintf("%s says %d bytes, %s says %d", first.dev.Name, first.vol.logicalSize, d.dev.Name, d.vol.logicalSize)}
		}
	}
	size := first.vol.logicalSize
	if size > 1<<62 {
		return nil, nil, &Error{What: "LVM volume descriptor", Field: "logicalSize", Vol: -1, DevOff: -1, Err: ErrCorrupt, Msg: fmt.Sprintf("%d bytes", size)}
	}
	type pe struct {
		peEntry
		d *lvmDev
	}
	var all []pe
	for _, d := range devs {
		for _, p := range d.pes {
			if p.length > 1<<62 || p.lOffset > 1<<62 || p.pOffset > 1<<62 {
				return nil, nil, &Error{What: "LVM PE entry", Vol: -1, Device: d.dev.Name, DevOff: -1, Err: ErrCorrupt,
					Msg: fmt.Sprintf("PE %d: logical 0x%x, physical 0x%x, length 0x%x", p.peID, p.lOffset, p.pOffset, p.length)}
			}
			all = append(all, pe{p, d})
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].lOffset < all[j].lOffset })
	names := first.sdNames
	for _, d := range devs {
		if d.vol.firstPE == 0 && d.sdNames != nil {
			names = d.sdNames
		}
	}
	numDevs := int(max(first.vol.numDevs, 1))
	lv := &lvol{size: int64(size)}
	var pos int64
	var missing []string
	addMissing := func(a, b int64) {
		// Name the extent by its index: count the device ranges before it.
		idx := 0
		for _, d := range devs {
			if len(d.pes) > 0 && int64(d.pes[0].lOffset) < a {
				idx++
			}
		}
		desc := fmt.Sprintf("extent %d of %d", idx, numDevs)
		if idx < len(names) && names[idx] != "" {
			desc += fmt.Sprintf(" (LVM device name %q)", names[idx])
		}
		desc += fmt.Sprintf(", logical bytes [0x%x, 0x%x)", a, b)
		missing = append(missing, desc)
		lv.segs = append(lv.segs, segment{lOff: a, len: b - a, missing: desc})
	}
	for _, p := range all {
		l, n := int64(p.lOffset), int64(p.length)
		if l >= lv.size {
			continue
		}
		n = min(n, lv.size-l)
		if l < pos {
			return nil, nil, &Error{What: "LVM PE entry", Vol: l, Device: p.d.dev.Name, DevOff: -1, Err: ErrCorrupt,
				Msg: fmt.Sprintf("PE %d overlaps logical bytes below 0x%x", p.peID, pos)}
		}
		if l > pos {
			addMissing(pos, l)
		}
		if int64(p.pOffset) < lvmHeaderOffset {
			return nil, nil, &Error{What: "LVM PE entry", Vol: l, Device: p.d.dev.Name, DevOff: -1, Err: ErrCorrupt,
				Msg: fmt.Sprintf("PE %d starts at physical 0x%x, inside the LVM header", p.peID, p.pOffset)}
		}
		lv.segs = append(lv.segs, segment{lOff: l, len: n, dev: p.d.dev, pOff: p.d.partOff + int64(p.pOffset)})
		pos = l + n
	}
	if pos < lv.size {
		addMissing(pos, lv.size)
	}
	if len(missing) > 0 && !allowMissing {
		return nil, nil, &Error{Vol: -1, DevOff: -1, Err: ErrMissingExtent,
			Msg: fmt.Sprintf("volume %s: %d of %d devices given; missing %s", first.vol.lvID, len(devs), numDevs, strings.Join(missing, "; "))}
	}
	// Merge adjacent segments of one device that continue each other.
	merged := lv.segs[:0]
	for _, s := range lv.segs {
		if k := len(merged) - 1; k >= 0 && s.dev != nil && merged[k].dev == s.dev && merged[k].pOff+merged[k].len == s.pOff {
			merged[k].len += s.len
			continue
		}
		merged = append(merged, s)
	}
	lv.segs = merged
	var infos []ExtentInfo
	for _, d := range devs {
		ei := ExtentInfo{Device: d.dev.Name, PartitionOffset: d.partOff, DeviceID: d.meta.devID.String(), DiskID: d.meta.diskID}
		if len(d.pes) > 0 {
			lo, hi := int64(d.pes[0].lOffset), int64(0)
			for _, p := range d.pes {
				lo = min(lo, int64(p.lOffset))
				hi = max(hi, int64(p.lOffset+p.length))
			}
			ei.Logical, ei.Length = lo, min(hi, lv.size)-lo
		}
		infos = append(infos, ei)
	}
	for _, s := range lv.segs {
		if s.dev == nil {
			infos = append(infos, ExtentInfo{Device: s.missing, Logical: s.lOff, Length: s.len, Missing: true})
		}
	}
	sort.SliceStable(infos, func(i, j int) bool { return infos[i].Logical < infos[j].Logical })
	return lv, infos, nil
}

// locate returns the device and offset of logical bytes [off, off+n), or
// of their prefix that ends at a segment boundary: n shortened to it.
func (lv *lvol) locate(off, n int64) (*Device, int64, int64, error) {
	const what = "file data"
	if off < 0 || n <= 0 || off > lv.size-n {
		return nil, 0, 0, corruptf(what, off, "%d bytes past the end of the %d-byte logical volume", n, lv.size)
	}
	i := sort.Search(len(lv.segs), func(i int) bool { return lv.segs[i].lOff+lv.segs[i].len > off })
	if i >= len(lv.segs) {
		return nil, 0, 0, corruptf(what, off, "no extent maps this logical offset")
	}
	s := &lv.segs[i]
	if s.dev == nil {
		return nil, 0, 0, errf(ErrMissingExtent, what, off, "its device is missing: %s", s.missing)
	}
	rel := off - s.lOff
	n = min(n, s.len-rel)
	if p := s.pOff + rel; p < 0 || p > s.dev.Size-n {
		return nil, 0, 0, &Error{What: what, Vol: off, Device: s.dev.Name, DevOff: p,
			Msg: fmt.Sprintf("%d bytes needed but the device holds %d (truncated image?)", n, s.dev.Size), Err: ErrCorrupt}
	}
	return s.dev, s.pOff + rel, n, nil
}

// readAt reads len(p) bytes at logical offset off, splitting the read at
// segment (PE, device) boundaries.
func (lv *lvol) readAt(p []byte, off int64, what string) error {
	if off < 0 || off > lv.size-int64(len(p)) {
		return corruptf(what, off, "%d bytes past the end of the %d-byte logical volume", len(p), lv.size)
	}
	i := sort.Search(len(lv.segs), func(i int) bool { return lv.segs[i].lOff+lv.segs[i].len > off })
	for len(p) > 0 {
		if i >= len(lv.segs) {
			return corruptf(what, off, "no extent maps this logical offset")
		}
		s := &lv.segs[i]
		rel := off - s.lOff
		n := min(int64(len(p)), s.len-rel)
		if s.dev == nil {
			return errf(ErrMissingExtent, what, off, "its device is missing: %s", s.missing)
		}
		if err := readDev(s.dev, p[:n], s.pOff+rel, what); err != nil {
			if e, ok := err.(*Error); ok {
				e.Vol = off
			}
			return err
		}
		p, off = p[n:], off+n
		i++
	}
	return nil
}
