package testimages

import "fmt"

// Geometry of each VMFS version as the generator lays it out
// (vmfs-format.md §4, §6, §7, §11, §13: the real volumes' values).

const (
	mib      = int64(1) << 20
	peSize   = 256 * mib  // LVM physical extent unit
	lvmAt    = 0x100000   // LVM device header offset in a device (partition)
	peDataAt = 0x1100000  // first PE's physical offset
	fsDescAt = 0x200000   // FS descriptor, logical
	hbAt     = 0x300000   // heartbeat region, logical
	fdLockTy = 0x10C00001 // lock type of an FD
)

// FD types.
const (
	fdDir     = 2
	fdFile    = 3
	fdSymlink = 4
	fdSys     = 5
	fdRDM     = 6
)

// Zero-level address types (how an FD's pointer array is read).
const (
	zlaDirect   = 1
	zlaSubBlock = 2
	zlaPointer  = 3
	zlaPB2      = 5 // single indirect through .pb2.sf (ESXi's VMFS6 .sbc.sf)
	zlaDouble   = 0x10D0
	zlaResident = 0x10D1
)

// resGeom is the cluster geometry of a resource file.
type resGeom struct {
	rpc, cpg int64 // resources per cluster, clusters per group
	size     int64 // bytes per resource (0: file blocks, data on the volume)
}

type geometry struct {
	vmfs               int
	lvmMajor, lvmMinor uint32
	fsMajor            uint32
	fsMinor            uint8
	config             uint32
	blockSize          int64
	md                 int64 // metadata alignment (VMFS6), 0 before
	lvmH               int64 // LVM devMeta size
	fdcStart           int64 // first block of .fdc.sf
	fdSize, fdMeta     int64 // FD size, metadata offset inside it
	resident           int64 // offset of resident data in an FD; 0: no resident files
	residentMax        int64
	ptrOff             int64 // pointer array offset in an FD
	ptrs               int64 // pointer array length
	ptrWidth           int64 // 4 (VMFS3/5) or 8 (VMFS6)
	clusterH           int64 // cluster header size in resource files
	sbSize, pbSize     int64
	fdc, sbc, pbc, pb2 resGeom
	fbb                resGeom
	dense              bool // DENSE_SBPC sub-block addresses
	hbSlot, hbSlots    int64
	magic              uint32 // FS descriptor magic: 0x2FABF15E, 0x2FABF15F on VMFS-L
	esxi               bool   // ESXi's layout of the system files (vmfs-format.md §15.1), not §13's
}

func geometryFor(v int) geometry {
	switch v {
	case 3:
		return geometry{
			vmfs: 3, lvmMajor: 3, lvmMinor: 16, fsMajor: 4, fsMinor: 31, config: 0x2,
			blockSize: mib, lvmH: 0x200, fdcStart: 4,
			fdSize: 0x800, fdMeta: 0x200, resident: 0, ptrOff: 0x400, ptrs: 256, ptrWidth: 4,
			clusterH: 0x400, sbSize: 64 << 10, pbSize: 4 << 10,
			fdc: resGeom{32, 32, 0x800}, sbc: resGeom{16, 32, 64 << 10}, pbc: resGeom{16, 32, 4 << 10},
			fbb: resGeom{200, 32, 0}, hbSlot: 512, hbSlots: 2048,
		}
	case 5:
		return geometry{
			vmfs: 5, lvmMajor: 5, lvmMinor: 21, fsMajor: 14, fsMinor: 81, config: 0x6,
			blockSize: mib, lvmH: 0x200, fdcStart: 4,
			fdSize: 0x800, fdMeta: 0x200, resident: 0x400, residentMax: 1024, ptrOff: 0x400, ptrs: 256, ptrWidth: 4,
			clusterH: 0x400, sbSize: 8 << 10, pbSize: 4 << 10,
			fdc: resGeom{32, 64, 0x800}, sbc: resGeom{32, 64, 8 << 10}, pbc: resGeom{16, 64, 4 << 10},
			pb2: resGeom{16, 64, 4 << 10}, fbb: resGeom{200, 64, 0}, dense: true, hbSlot: 512, hbSlots: 2048,
		}
	default:
		return geometry{
			vmfs: 6, lvmMajor: 6, lvmMinor: 21, fsMajor: 24, fsMinor: 82, config: 0x6,
			blockSize: mib, md: 0x1000, lvmH: 0x1000, fdcStart: 7,
			fdSize: 0x2000, fdMeta: 0x1000, resident: 0x1200, residentMax: 3584, ptrOff: 0x1600, ptrs: 320, ptrWidth: 8,
			clusterH: 0x2000, sbSize: 64 << 10, pbSize: 64 << 10,
			fdc: resGeom{256, 8, 0x2000}, sbc: resGeom{256, 8, 64 << 10}, pbc: resGeom{0, 8, 64 << 10},
			pb2: resGeom{32, 8, 64 << 10}, fbb: resGeom{512, 8, 0}, hbSlot: 0x1000, hbSlots: 1024,
		}
	}
}

// geometryOf is the geometry spec asks for: the version's, with the block
// size, the in-place upgrade from VMFS3, DENSE_SBPC, VMFS-L and the layout
// applied.
func geometryOf(spec Spec) (geometry, error) {
	g := geometryFor(spec.VMFS)
	g.magic = 0x2FABF15E
	switch spec.Layout {
	case "", LayoutESXi:
		g.esxi = true
	case LayoutMinimal:
	default:
		return g, fmt.Errorf("testimages: layout %q: want %q or %q", spec.Layout, LayoutESXi, LayoutMinimal)
	}
	if spec.Upgraded && spec.VMFS != 5 {
		return g, fmt.Errorf("testimages: an upgraded volume is VMFS5 (upgraded in place from VMFS3), not VMFS%d", spec.VMFS)
	}
	if spec.NoDenseSBPC && spec.VMFS != 5 {
		return g, fmt.Errorf("testimages: NoDenseSBPC applies to VMFS5 only")
	}
	if spec.Local && spec.VMFS == 3 {
		return g, fmt.Errorf("testimages: VMFS-L exists with VMFS5 and VMFS6 geometry only")
	}
	switch bs := spec.BlockSize; {
	case bs == 0 || bs == mib:
	case spec.VMFS == 6:
		return g, fmt.Errorf("testimages: block size %d: VMFS6 has 1 MiB blocks only", bs)
	case spec.VMFS == 5 && !spec.Upgraded:
		// A VMFS5 made by ESXi 5+ always has 1 MiB blocks; larger ones
		// come from VMFS3 (vmfs-format.md §4, §11).
		return g, fmt.Errorf("testimages: block size %d: a VMFS5 made as VMFS5 has 1 MiB blocks; set Upgraded for a VMFS3 block size", bs)
	case bs == 2*mib || bs == 4*mib || bs == 8*mib:
		g.blockSize = bs
	default:
		return g, fmt.Errorf("testimages: block size %d: want 1, 2, 4 or 8 MiB", bs)
	}
	// FDC start: round_up(4 MiB, blockSize) on VMFS3/5 (vmfs-format.md §4.1).
	if g.vmfs != 6 {
		g.fdcStart = (4*mib + g.blockSize - 1) / g.blockSize
	}
	if spec.Upgraded {
		// An in-place VMFS3→VMFS5 upgrade keeps VMFS3's resource geometry
		// (64 KiB sub-blocks, 16 per cluster), its block size and config
		// 0x2 without DENSE_SBPC (vmfs-format.md §4, §15.1). The FS major
		// becomes VMFS5's; the cluster geometry of the other resource files
		// stays VMFS3's (guessed: the upgrade does not rewrite them).
		v3 := geometryFor(3)
		g.sbSize, g.sbc, g.fdc, g.pbc, g.fbb = v3.sbSize, v3.sbc, v3.fdc, v3.pbc, v3.fbb
		g.pb2 = resGeom{16, 32, 4 << 10}
	}
	if spec.Upgraded || spec.NoDenseSBPC {
		g.config &^= 0x4
		g.dense = false
	}
	if spec.Local {
		// VMFS-L ("local", ESXi's OSDATA): magic 0x2FABF15F and LVM flag bit 0
		// (dissect.vmfs); otherwise VMFS5/6 geometry.
		g.magic = 0x2FABF15F
		g.config |= 0x100 // LOCAL, as dissect.vmfs names the bit (guessed: no VMFS-L sample)
	}
	return g, nil
}

// groupSize is the byte size of one cluster group of a resource file.
func (g geometry) groupSize(r resGeom) int64 { return r.cpg*g.clusterH + r.cpg*r.rpc*r.size }

// resOffset is the offset inside a resource file of resource index i
// (cluster i/rpc, resource i%rpc) — vmfs-format.md §6.1.
func (g geometry) resOffset(r resGeom, i int64) int64 {
	c, k := i/r.rpc, i%r.rpc
	grp, cl := c/r.cpg, c%r.cpg
	return 0x10000 + grp*g.groupSize(r) + r.cpg*g.clusterH + cl*r.rpc*r.size + k*r.size
}

// ptrsPerBlock is the number of addresses in one pointer block.
func (g geometry) ptrsPerBlock() int64 { return g.pbSize / g.ptrWidth }

// Addresses (vmfs-format.md §5).

func (g geometry) fbAddr(block int64, tbz bool) uint64 {
	if g.vmfs == 6 {
		a := uint64(1) | uint64(block/512)<<15 | uint64(block%512)<<51
		if tbz {
			a |= 0xFF << 7
		}
		return a
	}
	a := uint64(1) | uint64(block)<<6
	if tbz {
		a |= 1 << 5
	}
	return a
}

func (g geometry) sbAddr(i int64) uint64 {
	c, r := uint64(i/g.sbc.rpc), uint64(i%g.sbc.rpc)
	if g.vmfs == 6 {
		return 2 | c<<6 | r<<56
	}
	a := 2 | c<<6 | (r&0xF)<<28
	if g.dense {
		a |= (r >> 4 & 3) << 3
	}
	return a
}

// ptrBlockAddr is the address of pointer block i: a PB in .pbc.sf on
// VMFS3/5, a sub-block on VMFS6.
func (g geometry) pbAddr(i int64) uint64 {
	c, r := uint64(i/g.pbc.rpc), uint64(i%g.pbc.rpc)
	return 3 | c<<6 | (r&0xF)<<28
}

// pb2Addr is the address of PB2 resource i of .pb2.sf.
func (g geometry) pb2Addr(i int64) uint64 {
	c, r := uint64(i/g.pb2.rpc), uint64(i%g.pb2.rpc)
	if g.vmfs == 6 {
		return 5 | c<<6 | r<<56
	}
	return 5 | c<<6 | (r&0xF)<<28
}

func (g geometry) fdAddr(i int64) uint32 {
	return uint32(4 | (i/g.fdc.rpc)<<6 | (i%g.fdc.rpc)<<22)
}
