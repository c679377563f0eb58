package vmdk

import (
	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Hosted sparse extent (KDMV: monolithicSparse, twoGbMaxExtentSparse,
// hosted deltas, streamOptimized), VMware Virtual Disk Format 1.1/5.0,
// image-formats.md §2.4–2.5. Little-endian, packed, offsets in sectors.
const (
	kdmvHeaderSize = 512
	kdmvMagic      = "KDMV"
	kdmvGDAtEnd    = 0xffffffffffffffff
	kdmvMaxGrain   = 32768 // sectors (16 MiB); VMware writes 128
	kdmvMaxGTEs    = 4096  // qemu allows 512, VMware writes 512

	kdmvFlagNLTest     = 1 << 0
	kdmvFlagRGD        = 1 << 1
	kdmvFlagZeroGrain  = 1 << 2
	kdmvFlagCompressed = 1 << 16
	kdmvFlagMarkers    = 1 << 17

	kdmvCompressNone    = 0
	kdmvCompressDeflate = 1

	// Stream-optimized metadata marker types.
	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3
)

// kdmvHeader is a SparseExtentHeader (at sector 0, and as the footer of a
// streamOptimized file at EOF-1024).
type kdmvHeader [kdmvHeaderSize]byte

func (h *kdmvHeader) magic() string         { return string(h[0:4]) }
func (h *kdmvHeader) version() uint32       { return le32(h[4:]) }
func (h *kdmvHeader) flags() uint32         { return le32(h[8:]) }
func (h *kdmvHeader) capacity() uint64      { return le64(h[12:]) }
func (h *kdmvHeader) grainSize() uint64     { return le64(h[20:]) }
func (h *kdmvHeader) descOffset() uint64    { return le64(h[28:]) }
func (h *kdmvHeader) descSize() uint64      { return le64(h[36:]) }
func (h *kdmvHeader) numGTEsPerGT() uint32  { return le32(h[44:]) }
func (h *kdmvHeader) rgdOffset() uint64     { return le64(h[48:]) }
func (h *kdmvHeader) gdOffset() uint64      { return le64(h[56:]) }
func (h *kdmvHeader) overhead() uint64      { return le64(h[64:]) }
func (h *kdmvHeader) uncleanShutdown() byte { return h[72] }
func (h *kdmvHeader) nlCheck() string       { return string(h[73:77]) } // "\n \r\n"
func (h *kdmvHeader) compression() uint16   { return uint16(h[77]) | uint16(h[78])<<8 }

// readKDMVHeader reads the header at sector 0 and, for GD_AT_END files, the
// footer that takes its place.
func readKDMVHeader(name string, f File) (*kdmvHeader, error) {
	const st = "KDMV header"
	var h kdmvHeader
	if f.Size() < kdmvHeaderSize {
		return nil, corrupt(name, st, "", 0, "file is %d bytes, shorter than the header", f.Size())
	}
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, ioError(name, st, 0, err)
	}
	if err := checkKDMVHeader(name, &h, 0); err != nil {
		return nil, err
	}
	if h.gdOffset() != kdmvGDAtEnd {
		return &h, nil
	}
	// streamOptimized: footer marker, footer, end-of-stream marker in the
	// last three sectors.
	end := f.Size() &^ 511
	if end < 4*512 {
		return nil, corrupt(name, st, "gdOffset", 56, "GD_AT_END but the file is too short for a footer")
	}
	var tail [3 * 512]byte
	if _, err := f.ReadAt(tail[:], end-1536); err != nil {
		return nil, ioError(name, "KDMV footer", end-1536, err)
	}
	fm, eos := tail[:512], tail[1024:]
	if le32(fm[8:]) != 0 || le32(fm[12:]) != markerFooter {
		return nil, corrupt(name, "footer marker", "", end-1536, "size %d type %d, want 0 and %d", le32(fm[8:]), le32(fm[12:]), markerFooter)
	}
	if le64(eos) != 0 || le32(eos[8:]) != 0 || le32(eos[12:]) != markerEOS {
		return nil, corrupt(name, "end-of-stream marker", "", end-512, "not an end-of-stream marker")
	}
	var ft kdmvHeader
	copy(ft[:], tail[512:1024])
	if err := checkKDMVHeader(name, &ft, end-1024); err != nil {
		return nil, err
	}
	if ft.gdOffset() == kdmvGDAtEnd {
		return nil, corrupt(name, "KDMV footer", "gdOffset", end-1024+56, "footer has no grain directory offset")
	}
	return &ft, nil
}

func checkKDMVHeader(name string, h *kdmvHeader, at int64) error {
	const st = "KDMV header"
	switch {
	case h.magic() != kdmvMagic:
		return corrupt(name, st, "magic", at, "%q is not KDMV", h.magic())
	case h.version() < 1 || h.version() > 3:
		return unsupported(name, st, "version", at+4, "version %d", h.version())
	case h.flags()&kdmvFlagNLTest != 0 && h.nlCheck() != "\n \r\n":
		return corrupt(name, st, "newline check", at+73, "%q: the file was transferred in text mode", h.nlCheck())
	case h.capacity() > maxSectors:
		return corrupt(name, st, "capacity", at+12, "%d sectors", h.capacity())
	case h.compression() > kdmvCompressDeflate:
		return unsupported(name, st, "compression", at+77, "algorithm %d", h.compression())
	}
	return nil
}

// openKDMV builds the sparse extent of a KDMV file from its header h.
func openKDMV(name string, f File, h *kdmvHeader) (*sparse, error) {
	const st = "KDMV header"
	g := h.grainSize()
	if g == 0 || g > kdmvMaxGrain || g&(g-1) != 0 {
		return nil, unsupported(name, st, "grain size", 20, "%d sectors", g)
	}
	gtes := int64(h.numGTEsPerGT())
	if gtes == 0 || gtes > kdmvMaxGTEs {
		return nil, corrupt(name, st, "numGTEsPerGT", 44, "%d", gtes)
	}
	s := &sparse{
		name: name, format: "KDMV", f: f, fsize: f.Size(),
		capacity:   int64(h.capacity()) * 512,
		grain:      int64(g) * 512,
		gtLen:      gtes,
		gtEntry:    4,
		compressed: h.compression() == kdmvCompressDeflate,
		markers:    h.flags()&kdmvFlagMarkers != 0,
	}
	need := (s.capacity + s.gtLen*s.grain - 1) / (s.gtLen * s.grain)
	gd := h.gdOffset()
	if (gd == 0 && need > 0) || gd > uint64(s.fsize/512) {
		return nil, corrupt(name, st, "gdOffset", 56, "sector %d outside the %d-byte file", gd, s.fsize)
	}
	err := s.readGD(int64(gd)*512, need, 4, func(e uint64, _ int64) (int64, error) { return int64(e) * 512, nil })
	if err != nil {
		return nil, err
	}
	zeroGrain := h.flags()&kdmvFlagZeroGrain != 0
	s.decode = func(e uint64, where int64) (formats.Kind, int64, error) {
		switch {
		case e == 0:
			return formats.Hole, 0, nil
		case e == 1 && zeroGrain:
			return formats.Zero, 0, nil
		}
		o := int64(e) * 512
		if o >= s.fsize {
			return 0, 0, corrupt(name, "KDMV grain table", "entry", where, "grain at %#x lies outside the %d-byte file", o, s.fsize)
		}
		return formats.Data, o, nil
	}
	return s, nil
}
