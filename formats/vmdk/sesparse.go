package vmdk

import (
	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// seSparse (-sesparse.vmdk, ESXi 5.5+/VMFS6 snapshots): no public spec;
// layout as read by qemu's driver, see image-formats.md §2.3. All fields are
// little-endian u64, offsets and sizes in sectors.
const (
	seHeaderSize     = 512
	seMagic          = 0x00000000cafebabe
	seVolatileMagic  = 0x00000000cafecafe
	seVersion        = 0x0000000200000001
	seGrainSectors   = 8
	seGTSectors      = 64
	seGTEntries      = seGTSectors * 512 / 8 // 4096
	seGDEAllocated   = 0x10000000            // top 32 bits of a used directory entry
	seGTETypeShift   = 60
	seGTEUnallocated = 0
	seGTEUnmapped    = 1 // SCSI UNMAP: reads zero (qemu, Xen Orchestra)
	seGTEZero        = 2
	seGTEAllocated   = 3
)

// seHeader is the constant header in sector 0.
type seHeader [seHeaderSize]byte

func (h *seHeader) u64(off int) uint64        { return le64(h[off:]) }
func (h *seHeader) magic() uint64             { return h.u64(0) }
func (h *seHeader) version() uint64           { return h.u64(8) }
func (h *seHeader) capacity() uint64          { return h.u64(16) }
func (h *seHeader) grainSize() uint64         { return h.u64(24) }
func (h *seHeader) grainTableSize() uint64    { return h.u64(32) }
func (h *seHeader) flags() uint64             { return h.u64(40) }
func (h *seHeader) volatileOffset() uint64    { return h.u64(80) }
func (h *seHeader) grainDirOffset() uint64    { return h.u64(128) }
func (h *seHeader) grainDirSize() uint64      { return h.u64(136) }
func (h *seHeader) grainTablesOffset() uint64 { return h.u64(144) }
func (h *seHeader) grainTablesSize() uint64   { return h.u64(152) }
func (h *seHeader) grainsOffset() uint64      { return h.u64(192) }
func (h *seHeader) grainsSize() uint64        { return h.u64(200) }

// Volatile header fields (sector volatileOffset).
const (
	seVolMagicOff  = 0
	seVolReplayOff = 24
)

// openSESparse reads the headers and grain directory of a seSparse extent.
func openSESparse(name string, f File) (*sparse, error) {
	const st = "seSparse header"
	var h seHeader
	if f.Size() < seHeaderSize {
		return nil, corrupt(name, st, "", 0, "file is %d bytes, shorter than the header", f.Size())
	}
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, ioError(name, st, 0, err)
	}
	fsize := f.Size()
	sectors := uint64(fsize / 512)
	switch {
	case h.magic() != seMagic:
		return nil, corrupt(name, st, "magic", 0, "%#x", h.magic())
	case h.version() != seVersion:
		return nil, unsupported(name, st, "version", 8, "%#x", h.version())
	case h.grainSize() != seGrainSectors:
		return nil, unsupported(name, st, "grain size", 24, "%d sectors", h.grainSize())
	case h.grainTableSize() != seGTSectors:
		return nil, unsupported(name, st, "grain table size", 32, "%d sectors", h.grainTableSize())
	case h.flags() != 0:
		return nil, unsupported(name, st, "flags", 40, "%#x", h.flags())
	case h.capacity() > maxSectors:
		return nil, corrupt(name, st, "capacity", 16, "%d sectors", h.capacity())
	}
	vo := h.volatileOffset()
	if vo == 0 || vo >= sectors {
		return nil, corrupt(name, st, "volatile header offset", 80, "sector %d outside the file", vo)
	}
	var vh [512]byte
	if _, err := f.ReadAt(vh[:], int64(vo)*512); err != nil {
		return nil, ioError(name, "seSparse volatile header", int64(vo)*512, err)
	}
	if m := le64(vh[seVolMagicOff:]); m != seVolatileMagic {
		return nil, corrupt(name, "seSparse volatile header", "magic", int64(vo)*512, "%#x", m)
	}
	if le64(vh[seVolReplayOff:]) != 0 {
		return nil, &Error{File: name, Struct: "seSparse volatile header", Field: "replay journal", Off: int64(vo)*512 + seVolReplayOff, Err: ErrDirty}
	}
	for _, fld := range []struct {
		name string
		v    uint64
		at   int64
	}{{"grain directory offset", h.grainDirOffset(), 128}, {"grain tables offset", h.grainTablesOffset(), 144}, {"grains offset", h.grainsOffset(), 192}} {
		if fld.v == 0 || fld.v >= sectors {
			return nil, corrupt(name, st, fld.name, fld.at, "sector %d outside the %d-byte file", fld.v, fsize)
		}
	}
	s := &sparse{
		name: name, format: "seSparse", f: f, fsize: fsize,
		capacity: int64(h.capacity()) * 512,
		grain:    seGrainSectors * 512,
		gtLen:    seGTEntries,
		gtEntry:  8,
	}
	need := (s.capacity + s.gtLen*s.grain - 1) / (s.gtLen * s.grain)
	if have := h.grainDirSize(); have > sectors || int64(have)*512/8 < need {
		return nil, corrupt(name, st, "grain directory size", 136, "%d sectors cannot cover %d sectors of capacity", have, h.capacity())
	}
	gts := int64(h.grainTablesOffset()) * 512
	err := s.readGD(int64(h.grainDirOffset())*512, need, 8, func(e uint64, where int64) (int64, error) {
		if e>>32 != seGDEAllocated {
			return 0, corrupt(name, "seSparse grain directory", "entry", where, "%#x: top 32 bits are not %#x", e, seGDEAllocated)
		}
		return gts + int64(e&0xffffffff)*seGTSectors*512, nil
	})
	if err != nil {
		return nil, err
	}
	grains := int64(h.grainsOffset()) * 512
	s.decode = func(e uint64, where int64) (formats.Kind, int64, error) {
		switch e >> seGTETypeShift {
		case seGTEUnallocated:
			if e != 0 {
				return 0, 0, corrupt(name, "seSparse grain table", "entry", where, "%#x: unallocated entry with bits set", e)
			}
			return formats.Hole, 0, nil
		case seGTEUnmapped, seGTEZero:
			return formats.Zero, 0, nil
		case seGTEAllocated:
			// The 60-bit grain index is stored rotated: its low 12 bits
			// are in bits 48–59.
			idx := (e>>48)&0xfff | (e&0xffffffffffff)<<12
			if idx >= uint64(fsize/s.grain) {
				return 0, 0, corrupt(name, "seSparse grain table", "entry", where, "%#x: grain %d lies outside the %d-byte file", e, idx, fsize)
			}
			o := grains + int64(idx)*s.grain
			if o >= fsize {
				return 0, 0, corrupt(name, "seSparse grain table", "entry", where, "%#x: grain at %#x lies outside the %d-byte file", e, o, fsize)
			}
			return formats.Data, o, nil
		}
		return 0, 0, corrupt(name, "seSparse grain table", "entry", where, "%#x: unknown type %d", e, e>>seGTETypeShift)
	}
	return s, nil
}
