package vmdk

import (
	"strconv"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

// COWD ("ESX Server sparse extent", vmfsSparse -delta.vmdk): a 2048-byte
// header of little-endian u32 fields (image-formats.md §2.2), a grain
// directory of u32 sector numbers of grain tables, and grain tables of 4096
// u32 sector numbers of grains (0 = not in this delta).
const (
	cowdHeaderSize = 2048
	cowdGTEntries  = 4096
	cowdMaxGrain   = 2048 // sectors; ESXi writes 1
)

// cowdHeader is the COWD header.
type cowdHeader [cowdHeaderSize]byte

func (h *cowdHeader) magic() string        { return string(h[0:4]) } // "COWD"
func (h *cowdHeader) version() uint32      { return le32(h[4:]) }    // 1
func (h *cowdHeader) flags() uint32        { return le32(h[8:]) }    // 3
func (h *cowdHeader) capacity() uint32     { return le32(h[12:]) }   // sectors
func (h *cowdHeader) grainSize() uint32    { return le32(h[16:]) }   // sectors
func (h *cowdHeader) gdOffset() uint32     { return le32(h[20:]) }   // sectors
func (h *cowdHeader) numGDEntries() uint32 { return le32(h[24:]) }
func (h *cowdHeader) freeSector() uint32   { return le32(h[28:]) }

// openCOWD reads the header and grain directory of a COWD extent file.
func openCOWD(name string, f File) (*sparse, error) {
	const st = "COWD header"
	var h cowdHeader
	if f.Size() < cowdHeaderSize {
		return nil, corrupt(name, st, "", 0, "file is %d bytes, shorter than the header", f.Size())
	}
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, ioError(name, st, 0, err)
	}
	return decodeCOWD(name, f, &h)
}

func decodeCOWD(name string, f File, h *cowdHeader) (*sparse, error) {
	const st = "COWD header"
	if h.magic() != "COWD" {
		return nil, corrupt(name, st, "magic", 0, "%q is not COWD", h.magic())
	}
	if h.version() != 1 {
		return nil, unsupported(name, st, "version", 4, "version %d", h.version())
	}
	g := int64(h.grainSize())
	if g == 0 || g > cowdMaxGrain {
		return nil, unsupported(name, st, "grain size", 16, "%d sectors", g)
	}
	s := &sparse{
		name: name, format: "COWD", f: f, fsize: f.Size(),
		capacity: int64(h.capacity()) * 512,
		grain:    g * 512,
		gtLen:    cowdGTEntries,
		gtEntry:  4,
	}
	need := (s.capacity + s.gtLen*s.grain - 1) / (s.gtLen * s.grain)
	if n := int64(h.numGDEntries()); n < need {
		return nil, corrupt(name, st, "numGDEntries", 24, "%d entries cannot cover %d sectors (need %d)", n, h.capacity(), need)
	}
	gd := int64(h.gdOffset()) * 512
	if gd < cowdHeaderSize && need > 0 {
		return nil, corrupt(name, st, "gdOffset", 20, "grain directory at %#x overlaps the header", gd)
	}
	err := s.readGD(gd, need, 4, func(e uint64, _ int64) (int64, error) { return int64(e) * 512, nil })
	if err != nil {
		return nil, err
	}
	s.decode = func(e uint64, where int64) (formats.Kind, int64, error) {
		if e == 0 {
			return formats.Hole, 0, nil
		}
		o := int64(e) * 512
		if o < cowdHeaderSize || o >= s.fsize {
			return 0, 0, corrupt(name, "COWD grain table", "entry", where, "grain at %#x lies outside the %d-byte file", o, s.fsize)
		}
		return formats.Data, o, nil
	}
	return s, nil
}
