package vhd

import (
	"encoding/binary"
	"time"
)

// On-disk structures, as described by the Microsoft Virtual Hard Disk Image
// Format Specification 1.0 (2006) and summarised in
// docs/image-formats.md §4.2. Everything is big-endian.

const (
	// SectorSize is the VHD sector: the unit of the BAT, the sector bitmap
	// and the CHS geometry.
	SectorSize = 512
	// FooterSize is the size of the hard disk footer.
	FooterSize = 512
	// HeaderSize is the size of the dynamic disk header.
	HeaderSize = 1024
	// BlockSize is the block size of the dynamic disks Plan writes (the
	// size Hyper-V, Virtual PC, qemu and XenServer's blktap use).
	BlockSize = 2 << 20

	// MaxSize is the largest virtual size Plan writes as a VHD: 2040 GiB,
	// the limit of Hyper-V and of qemu's vpc driver (it opens 2040 GiB and
	// refuses anything larger, tested with qemu 7.2).
	MaxSize = 2040 << 30
	// MaxAzureSize is the largest virtual size of an Azure fixed VHD
	// (32 TiB). Only Options.Azure output may exceed MaxSize.
	MaxAzureSize = 32 << 40
	// AzureMinSize is the smallest virtual size Azure accepts for an
	// uploaded disk (20 MiB).
	AzureMinSize = 20 << 20

	// sectorsMaxCHS is 65535 cylinders × 16 heads × 255 sectors, the
	// largest geometry; qemu uses the current size when it sees it.
	sectorsMaxCHS = 65535 * 16 * 255

	cookieFooter = "conectix"
	cookieHeader = "cxsparse"

	featureReserved = 0x00000002 // "must always be set"
	formatVersion   = 0x00010000

	// Disk types (footer field "disk type").
	typeFixed        = 2
	typeDynamic      = 3
	typeDifferencing = 4

	batUnused = 0xFFFFFFFF
	noOffset  = 0xFFFFFFFFFFFFFFFF
)

var be = binary.BigEndian

// epoch is the origin of VHD timestamps.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// footer is the 512-byte hard disk footer, found at the end of every VHD and,
// for dynamic and differencing disks, as a copy at offset 0. Each accessor
// states a field's offset and length once; reading and writing use it alike.
type footer [FooterSize]byte

func (f *footer) cookie() []byte         { return f[0:][:8] }
func (f *footer) features() []byte       { return f[8:][:4] }
func (f *footer) version() []byte        { return f[12:][:4] }
func (f *footer) dataOffset() []byte     { return f[16:][:8] } // dynamic header offset, noOffset for fixed
func (f *footer) timestamp() []byte      { return f[24:][:4] } // seconds since 2000-01-01 UTC
func (f *footer) creatorApp() []byte     { return f[28:][:4] }
func (f *footer) creatorVersion() []byte { return f[32:][:4] }
func (f *footer) creatorHost() []byte    { return f[36:][:4] }
func (f *footer) originalSize() []byte   { return f[40:][:8] }
func (f *footer) currentSize() []byte    { return f[48:][:8] }
func (f *footer) geometry() []byte       { return f[56:][:4] } // cylinders u16, heads u8, sectors/track u8
func (f *footer) diskType() []byte       { return f[60:][:4] }
func (f *footer) checksum() []byte       { return f[64:][:4] }
func (f *footer) uniqueID() []byte       { return f[68:][:16] }
func (f *footer) savedState() []byte     { return f[84:][:1] }

// footerChecksumOff is the offset of the checksum field, for error messages.
const footerChecksumOff = 64

// dynHeader is the 1024-byte dynamic disk header at the footer's data offset.
type dynHeader [HeaderSize]byte

func (h *dynHeader) cookie() []byte         { return h[0:][:8] }
func (h *dynHeader) dataOffset() []byte     { return h[8:][:8] } // unused, noOffset
func (h *dynHeader) tableOffset() []byte    { return h[16:][:8] }
func (h *dynHeader) version() []byte        { return h[24:][:4] }
func (h *dynHeader) maxEntries() []byte     { return h[28:][:4] }
func (h *dynHeader) blockSize() []byte      { return h[32:][:4] }
func (h *dynHeader) checksum() []byte       { return h[36:][:4] }
func (h *dynHeader) parentUUID() []byte     { return h[40:][:16] }
func (h *dynHeader) parentTime() []byte     { return h[56:][:4] }
func (h *dynHeader) parentName() []byte     { return h[64:][:512] }
func (h *dynHeader) parentLocators() []byte { return h[576:][:192] }

// Offsets of header fields, for error messages.
const (
	headerTableOff      = 16
	headerMaxEntriesOff = 28
	headerBlockSizeOff  = 32
	headerChecksumOff   = 36
)

// checksum returns the VHD checksum of b: the one's complement of the sum of
// all its bytes, where the bytes of the checksum field [at, at+4) count as
// zero.
func checksum(b []byte, at int) uint32 {
	var sum uint32
	for i, c := range b {
		if i >= at && i < at+4 {
			continue
		}
		sum += uint32(c)
	}
	return ^sum
}

// Geometry is a VHD disk geometry: cylinders, heads, sectors per track.
type Geometry struct {
	Cylinders uint16
	Heads     uint8
	Sectors   uint8
}

// Size returns C·H·S·512, the size that Virtual PC (and qemu for some
// creator applications) derives from the geometry.
func (g Geometry) Size() int64 {
	return int64(g.Cylinders) * int64(g.Heads) * int64(g.Sectors) * SectorSize
}

// MaxGeometry is 65535/16/255, the largest CHS geometry. qemu reads the
// current size of a disk with this geometry whatever its creator application.
var MaxGeometry = Geometry{65535, 16, 255}

// GeometryFor returns the CHS geometry of a disk of size bytes, computed by
// the algorithm in the appendix of the VHD specification. For sizes of
// 65535·16·255 sectors (about 127 GiB) and more it is MaxGeometry. Its
// Size() is usually a little smaller than size.
func GeometryFor(size int64) Geometry {
	ts := min(size/SectorSize, sectorsMaxCHS)
	var spt, hd, cth int64
	if ts >= 65535*16*63 {
		spt, hd = 255, 16
		cth = ts / spt
	} else {
		spt = 17
		cth = ts / spt
		hd = max(4, (cth+1023)/1024)
		if cth >= hd*1024 || hd > 16 {
			spt, hd = 31, 16
			cth = ts / spt
		}
		if cth >= hd*1024 {
			spt, hd = 63, 16
			cth = ts / spt
		}
	}
	return Geometry{Cylinders: uint16(cth / hd), Heads: uint8(hd), Sectors: uint8(spt)}
}

func (g Geometry) put(b []byte) {
	be.PutUint16(b, g.Cylinders)
	b[2] = g.Heads
	b[3] = g.Sectors
}

func geometryFrom(b []byte) Geometry {
	return Geometry{Cylinders: be.Uint16(b), Heads: b[2], Sectors: b[3]}
}

// currentSizeCreators are the creator applications for which every qemu
// version reads the footer's current size rather than C·H·S: qemu before
// 10.0 trusts exactly these (plus any disk with MaxGeometry); qemu 10.0 uses
// C·H·S only for "vpc " and "qemu". Hyper-V, Azure and libvhdi always use the
// current size.
var currentSizeCreators = []string{"win ", "qem2", "d2v ", "CTXS", "tap\x00"}

func trustsCurrentSize(app [4]byte) bool {
	for _, c := range currentSizeCreators {
		if string(app[:]) == c {
			return true
		}
	}
	return false
}
