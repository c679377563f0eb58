package testimages

import (
	"fmt"
	"math/bits"
)

// Storage decisions and block allocation.

// capacity is the number of resources f's header announces.
func (f *resFile) capacity() int64 {
	if f.numRes > 0 {
		return f.numRes
	}
	return f.groups * f.geom.cpg * f.geom.rpc
}

// allocSB hands out the next sub-block, from sbStart on, wrapping around.
func (v *vol) allocSB() (int64, error) {
	c := v.sbc.capacity()
	if v.nextSB >= c {
		return 0, fmt.Errorf("testimages: more than %d sub-blocks needed", c)
	}
	v.nextSB++
	return (v.sbStart + v.nextSB - 1) % c, nil
}

// sbUsed reports whether sub-block i was handed out.
func (v *vol) sbUsed(i int64) bool {
	c := v.sbc.capacity()
	return (i-v.sbStart+c)%c < v.nextSB
}

// allocPtrBlock hands out a pointer block: a PB on VMFS3/5, a sub-block on
// VMFS6. It returns its address and logical offset.
func (v *vol) allocPtrBlock() (uint64, int64, error) {
	if v.g.vmfs == 6 {
		i, err := v.allocSB()
		if err != nil {
			return 0, 0, err
		}
		return v.g.sbAddr(i), v.resLogical(v.sbc, i), nil
	}
	if v.nextPB >= v.pbc.capacity() {
		return 0, 0, fmt.Errorf("testimages: more than %d pointer blocks needed", v.pbc.capacity())
	}
	v.nextPB++
	i := v.nextPB - 1
	return v.g.pbAddr(i), v.resLogical(v.pbc, i), nil
}

// blockAllocator hands out file blocks: system blocks from the start of the
// volume, data blocks round-robin over the extents of a spanned volume in
// chunks of 8 so that files cross device boundaries.
type blockAllocator struct {
	cursors []int64 // next block per extent
	limits  []int64 // end block per extent
	turn    int
	inChunk int
}

func (a *blockAllocator) next() (int64, error) {
	for tries := 0; tries <= len(a.cursors); tries++ {
		e := a.turn
		if a.cursors[e] < a.limits[e] {
			b := a.cursors[e]
			a.cursors[e]++
			a.inChunk++
			if a.inChunk == 8 {
				a.inChunk = 0
				a.turn = (a.turn + 1) % len(a.cursors)
			}
			return b, nil
		}
		a.inChunk = 0
		a.turn = (a.turn + 1) % len(a.cursors)
	}
	return 0, fmt.Errorf("testimages: volume full")
}

// run hands out n contiguous blocks starting at a multiple of align, from
// the first extent that has room.
func (a *blockAllocator) run(n, align int64) (int64, error) {
	for e := range a.cursors {
		start := (a.cursors[e] + align - 1) / align * align
		if start+n <= a.limits[e] {
			a.cursors[e] = start + n
			return start, nil
		}
	}
	return 0, fmt.Errorf("testimages: no room for %d aligned blocks", n)
}

// lfbBlocks is the number of file blocks in a VMFS6 large file block
// (512 MiB with 1 MiB blocks: sfbToLfbShift 9).
const lfbBlocks = 512

// dirSBMax is the size up to which a VMFS3/5 subdirectory stays in
// sub-blocks (guessed: 64 KiB, one VMFS3 sub-block or eight VMFS5 ones).
const dirSBMax = 64 << 10

// decide picks n's storage form (vmfs-format.md §8) from its size and the
// requested layout.
func (v *vol) decide(n *node) error {
	g := v.g
	B := g.blockSize
	P := g.ptrsPerBlock()
	nb := (n.size + B - 1) / B
	want := n.layout
	if n.rdm {
		// A mapping: fileLength is the LUN's size, no block is allocated;
		// the FD's data area holds the LUN's SCSI id. ZLA 1 with an empty
		// pointer array (guessed: no RDM sample).
		n.zla, n.fdBlock, n.used = zlaDirect, B, "rdm"
		n.ptrs = make([]uint64, g.ptrs)
		return nil
	}
	if want == "" {
		switch {
		case n.typ == fdDir && n != v.root && v.g.vmfs != 6 && n.size > dirSBMax:
			// VMFS3/5 directories move from sub-blocks to file blocks as
			// they grow (guessed threshold).
			want = "blocks"
		case n.typ == fdDir && n != v.root:
			want = "subblock"
		case n.typ == fdSymlink && g.vmfs == 6:
			want = "resident"
		case n.typ == fdSymlink:
			want = "subblock"
		case g.residentMax > 0 && n.size <= g.residentMax && n.block == nil:
			want = "resident"
		case n.size <= g.sbSize && n.block == nil:
			want = "subblock"
		case nb <= g.ptrs:
			want = "blocks"
		case nb <= g.ptrs*P:
			want = "pointer"
		default:
			want = "double"
		}
	}
	switch want {
	case "resident":
		if g.residentMax == 0 || n.size > g.residentMax {
			return fmt.Errorf("testimages: %q: %d bytes cannot be resident on VMFS%d", n.path, n.size, g.vmfs)
		}
		n.zla, n.fdBlock = zlaResident, g.sbSize
	case "subblock":
		if (n.size+g.sbSize-1)/g.sbSize > g.ptrs {
			return fmt.Errorf("testimages: %q: too large for sub-blocks", n.path)
		}
		n.zla, n.fdBlock = zlaSubBlock, g.sbSize
	case "lfb":
		if g.vmfs != 6 {
			return fmt.Errorf("testimages: %q: large file blocks exist on VMFS6 only", n.path)
		}
		if v.spec.Extents > 1 {
			return fmt.Errorf("testimages: %q: the generator lays out large file blocks on single-extent volumes only", n.path)
		}
		if (nb+lfbBlocks-1)/lfbBlocks > g.ptrs {
			return fmt.Errorf("testimages: %q: %d large blocks exceed the %d direct addresses", n.path, (nb+lfbBlocks-1)/lfbBlocks, g.ptrs)
		}
		n.zla, n.fdBlock = zlaDirect, B*lfbBlocks
	case "blocks":
		if nb > g.ptrs {
			return fmt.Errorf("testimages: %q: %d blocks exceed the %d direct addresses", n.path, nb, g.ptrs)
		}
		n.zla, n.fdBlock = zlaDirect, B
	case "pointer":
		if nb > g.ptrs*P {
			return fmt.Errorf("testimages: %q: too large for single indirection", n.path)
		}
		n.zla, n.fdBlock = zlaPointer, B
	case "double":
		if g.vmfs == 3 {
			return fmt.Errorf("testimages: %q: VMFS3 has no double indirection", n.path)
		}
		n.zla, n.fdBlock = zlaDouble, B
	default:
		return fmt.Errorf("testimages: %q: unknown layout %q", n.path, want)
	}
	n.used = want
	return nil
}

// place allocates n's storage and records what must be written.
func (v *vol) place(n *node, alloc *blockAllocator) error {
	g := v.g
	if n.rdm {
		return nil
	}
	switch n.zla {
	case zlaResident:
		n.allocated = n.size
		n.mark(0, n.size, "data")
		return nil
	case zlaSubBlock:
		k := (n.size + g.sbSize - 1) / g.sbSize
		n.ptrs = make([]uint64, g.ptrs)
		for i := int64(0); i < k; i++ {
			sb, err := v.allocSB()
			if err != nil {
				return err
			}
			n.ptrs[i] = g.sbAddr(sb)
			buf := make([]byte, g.sbSize)
			n.fill(buf, i*g.sbSize)
			v.writes = append(v.writes, write{v.resLogical(v.sbc, sb), buf})
		}
		n.numBlocks = k
		n.allocated = n.size
		n.mark(0, n.size, "data")
		return nil
	}
	if n.used == "lfb" {
		return v.placeLFB(n, alloc)
	}
	B := g.blockSize
	P := g.ptrsPerBlock()
	nb := (n.size + B - 1) / B
	n.ptrs = make([]uint64, g.ptrs)
	// Pointer blocks in memory, by (level, index): level-1 blocks hold data
	// addresses, level-2 blocks (double indirection) hold level-1 addresses.
	type pblk struct {
		addr uint64
		off  int64
		b    []byte
	}
	l1 := map[int64]*pblk{}
	l2 := map[int64]*pblk{}
	newPB := func() (*pblk, error) {
		a, off, err := v.allocPtrBlock()
		if err != nil {
			return nil, err
		}
		n.numPB++
		return &pblk{a, off, make([]byte, g.pbSize)}, nil
	}
	put := func(b []byte, i int64, a uint64) {
		if g.ptrWidth == 8 {
			le64(b, int(i*8), a)
		} else {
			le32(b, int(i*4), uint32(a))
		}
	}
	for i := int64(0); i < nb; i++ {
		st := blockData
		if n.block != nil {
			st = n.block(i)
		}
		if st == blockHole {
			n.holes++
			n.mark(i*B, B, "hole")
			continue
		}
		b, err := alloc.next()
		if err != nil {
			return err
		}
		v.usedBlocks++
		v.used[b] = true
		n.numBlocks++
		a := g.fbAddr(b, st == blockTBZ)
		if st == blockTBZ {
			n.numTBZ++
			v.tbz = append(v.tbz, b)
			n.mark(i*B, B, "zero")
		} else {
			n.mark(i*B, B, "data")
			n.allocated += min(B, n.size-i*B)
			v.data = append(v.data, dataBlock{b, n, i})
		}
		switch n.zla {
		case zlaDirect:
			n.ptrs[i] = a
		case zlaPointer:
			pb := l1[i/P]
			if pb == nil {
				if pb, err = newPB(); err != nil {
					return err
				}
				l1[i/P] = pb
				n.ptrs[i/P] = pb.addr
			}
			put(pb.b, i%P, a)
		case zlaDouble:
			top := l2[i/(P*P)]
			if top == nil {
				if top, err = newPB(); err != nil {
					return err
				}
				l2[i/(P*P)] = top
				n.ptrs[i/(P*P)] = top.addr
			}
			pb := l1[i/P]
			if pb == nil {
				if pb, err = newPB(); err != nil {
					return err
				}
				l1[i/P] = pb
				put(top.b, (i/P)%P, pb.addr)
			}
			put(pb.b, i%P, a)
		}
	}
	for _, m := range []map[int64]*pblk{l1, l2} {
		for _, pb := range m {
			v.writes = append(v.writes, write{pb.off, pb.b})
		}
	}
	return nil
}

// fd encodes n's file descriptor (vmfs-format.md §7).
func (v *vol) fd(n *node) []byte {
	g := v.g
	b := make([]byte, g.fdSize)
	off := v.resLogical(v.fdc, n.fd)
	le32(b, 0, fdLockTy)
	le64(b, 4, uint64(off))
	m := b[g.fdMeta:]
	le32(m, 0x00, g.fdAddr(n.fd))
	le32(m, 0x04, max(n.gen, 1))
	nlink := uint32(1)
	if n.isDir() {
		nlink = 2
		if g.esxi {
			// ".." of every subdirectory links to it (the root's count
			// includes .sdd.sf, §15.1).
			for _, c := range n.children {
				if c.isDir() {
					nlink++
				}
			}
		}
	}
	le32(m, 0x08, nlink)
	le32(m, 0x0C, n.typ)
	le32(m, 0x10, n.flags)
	le64(m, 0x14, uint64(n.size))
	le64(m, 0x1C, uint64(n.fdBlock))
	le64(m, 0x24, uint64(n.numBlocks))
	t := uint32(1700000000 + v.spec.Seed%100000)
	le32(m, 0x2C, t)
	le32(m, 0x30, t)
	le32(m, 0x34, t)
	le32(m, 0x40, n.mode)
	le32(m, 0x44, n.zla)
	le32(m, 0x48, uint32(n.numTBZ))
	le32(m, 0x54, uint32(n.numTBZ>>32))
	le32(m, 0x5C, uint32(n.numPB))
	if g.vmfs == 6 {
		le32(m, 0x64, 0x66646D64) // "dmdf"
		le32(m, 0x70, g.fdAddr(v.parentOf(n).fd))
		if g.esxi && !n.system && n != v.root && n.zla != zlaResident && n.size > 0 {
			// The affinity FD of a file with content is its parent
			// directory (§15.1; "content" read as: allocates storage).
			le32(m, 0x68, g.fdAddr(v.parentOf(n).fd))
		}
	}
	if n.used == "lfb" {
		le32(m, 0x8C, uint32(n.numBlocks)) // numLFB
	}
	if g.vmfs >= 5 {
		shift := bits.TrailingZeros64(uint64(n.fdBlock))
		tbzShift := uint32(20) // VMFS6: the FS's 1 MiB tbzGranularity
		if g.vmfs == 5 {
			tbzShift = uint32(shift) // VMFS5: 13 on 8 KiB sub-block files, 20 on 1 MiB block files (§7)
		}
		le32(m, 0x6C, tbzShift)
		m[0x89] = byte(shift)
	}
	if n.zla == zlaResident {
		n.fill(b[g.resident:g.resident+g.residentMax], 0)
		return b
	}
	for i, a := range n.ptrs {
		if g.ptrWidth == 8 {
			le64(b, int(g.ptrOff)+i*8, a)
		} else {
			le32(b, int(g.ptrOff)+i*4, uint32(a))
		}
	}
	if n.rdm {
		// The mapped LUN's SCSI disk id in the FD's data area
		// (FS3_RawDiskMap: type, len, lun, devType, scsiLevel, vendor,
		// model, revision, id).
		at := g.resident
		if at == 0 {
			at = g.ptrOff
		}
		id := fmt.Sprintf("naa.6000c29%025x", mix64(uint64(n.fd)^uint64(v.spec.Seed)))[:36]
		b[at] = 0 // disk
		b[at+1] = byte(len(id))
		copy(b[at+6:], "VMware  ")
		copy(b[at+14:], "Virtual disk    ")
		copy(b[at+30:], "2.0 ")
		copy(b[at+34:at+78], id)
	}
	return b
}

// resHeader encodes a resource file header (vmfs-format.md §6.1).
func (v *vol) resHeader(f *resFile, numRes int64) []byte {
	b := make([]byte, 0x100)
	le32(b, 0x00, uint32(f.geom.rpc))
	le32(b, 0x04, uint32(f.geom.cpg))
	le32(b, 0x08, 0x10000)
	le32(b, 0x0C, uint32(f.geom.size))
	le32(b, 0x10, uint32(v.g.groupSize(f.geom)))
	le32(b, 0x14, uint32(numRes))
	le32(b, 0x18, uint32(f.groups))
	le32(b, 0x1C, uint32(numRes>>32))
	if v.g.vmfs == 6 {
		le32(b, 0x20, 0x72666D64) // "dmfr"
		le32(b, 0x24, 1)
	}
	return b
}

// clusterHeaders writes the cluster headers of the resource files: a lock
// block (type 0x10C00000 + resource type + 1, its own logical address) and
// the cluster metadata with a bitmap whose set bits are free resources
// (vmfs-format.md §6.1, §15.1). VMFS3/5 metadata: {clusterNum, total, free,
// nextFree}, bitmap at +16. VMFS6 (ESXi layout only; §13's recipe has
// none): signature "dmcr" at +0x10, u64 clusterNum +0x18, u16 total +0x20,
// u16 free +0x22, version 1 at +0x30, bitmap at +0x80; the affinity table
// at +0x8E0 is left empty. Readers need them only for free-space
// accounting; see Manifest.FreeBlocks for .fbb.sf.
func (v *vol) clusterHeaders() {
	g := v.g
	if g.vmfs == 6 && !g.esxi {
		return
	}
	fds := map[int64]bool{}
	for _, n := range v.nodes {
		fds[n.fd] = true
	}
	for _, n := range v.root.children {
		if n.system {
			fds[n.fd] = true
		}
	}
	total := int64(len(v.used))
	type res struct {
		f    *resFile
		geom resGeom
		typ  uint32
		n    int64 // resources described
		used func(i int64) bool
	}
	list := []res{
		{v.sbc, v.sbc.geom, 3, v.sbc.capacity(), v.sbUsed},
		{v.pbc, v.pbc.geom, 4, v.pbc.capacity(), func(i int64) bool { return i < v.nextPB }},
		{v.fdc, v.fdc.geom, 5, v.fdc.capacity(), func(i int64) bool { return fds[i] }},
	}
	if v.pb2 != nil {
		list = append(list, res{v.pb2, v.pb2.geom, 6, v.pb2.capacity(), func(i int64) bool { return v.sbc.nblocks > g.ptrs && i == 0 }})
	}
	if v.jbc != nil {
		list = append(list, res{v.jbc, v.jbc.geom, 7, v.jbc.capacity(), func(int64) bool { return false }})
	}
	if g.vmfs == 6 {
		// .fbb.sf: LFB clusters of 16 large blocks (an LFB is free when
		// every block of its 512 MiB exists and is free), and SFB cluster
		// c's header as LFB resource c, inside the LFB cluster group
		// (0x20000 + c·0x2000 in the first group).
		lfbFree := func(i int64) bool {
			if (i+1)*lfbBlocks > total {
				return false
			}
			for b := i * lfbBlocks; b < (i+1)*lfbBlocks; b++ {
				if v.used[b] {
					return false
				}
			}
			return true
		}
		nLFB := (total + lfbBlocks - 1) / lfbBlocks
		list = append(list, res{v.fbb, lfbGeom, 8, nLFB, func(i int64) bool { return !lfbFree(i) }})
		for c := int64(0); c < nLFB; c++ {
			off := v.fileLogical(v.fbb, g.resOffset(lfbGeom, c))
			v.writes = append(v.writes, write{off, v.clusterHeader(off, 2, c, g.fbb.rpc, min(g.fbb.rpc, total-c*g.fbb.rpc), func(i int64) bool { return v.used[c*g.fbb.rpc+i] })})
		}
	} else {
		list = append(list, res{v.fbb, g.fbb, 2, total, func(i int64) bool { return v.used[i] }})
	}
	for _, r := range list {
		if r.geom.rpc == 0 {
			continue
		}
		clusters := (r.n + r.geom.rpc - 1) / r.geom.rpc
		for c := int64(0); c < clusters; c++ {
			grp, k := c/r.geom.cpg, c%r.geom.cpg
			off := v.fileLogical(r.f, 0x10000+grp*g.groupSize(r.geom)+k*g.clusterH)
			items := min(r.geom.rpc, r.n-c*r.geom.rpc)
			v.writes = append(v.writes, write{off, v.clusterHeader(off, r.typ, c, r.geom.rpc, items, func(i int64) bool { return r.used(c*r.geom.rpc + i) })})
		}
	}
}

// clusterHeader encodes the header of cluster c (lock block and metadata)
// at logical offset off: items resources of which used tells the used ones.
func (v *vol) clusterHeader(off int64, typ uint32, c, rpc, items int64, used func(i int64) bool) []byte {
	H := v.g.clusterH
	b := make([]byte, H)
	le32(b, 0, 0x10C00000+typ)
	le64(b, 4, uint64(off))
	m := b[H/2:]
	bitmapAt := int64(16)
	if v.g.vmfs == 6 {
		bitmapAt = 0x80
	}
	var free int64
	next := int64(-1)
	for i := int64(0); i < items; i++ {
		if !used(i) {
			free++
			m[bitmapAt+i/8] |= 1 << (i % 8)
			if next < 0 {
				next = i
			}
		}
	}
	if v.g.vmfs == 6 {
		le32(m, 0x10, 0x72636D64) // "dmcr"
		le64(m, 0x18, uint64(c))
		le16(m, 0x20, uint16(items))
		le16(m, 0x22, uint16(free))
		le32(m, 0x30, 1)
		return b
	}
	le32(m, 0, uint32(c))
	le32(m, 4, uint32(items))
	le32(m, 8, uint32(free))
	le32(m, 12, uint32(max(next, 0)))
	return b
}

// placeLFB lays n out in VMFS6 large file blocks: a direct array of LFB
// addresses (type 7, block number in bits 15–45) of 512 MiB-aligned runs of
// 512 file blocks (vmfs-format.md §5.2). A large block is a hole when every
// file block in it is; TBZ large blocks are not generated (the meaning of
// the 8-bit TBZ field in a 512 MiB block is not known).
func (v *vol) placeLFB(n *node, alloc *blockAllocator) error {
	B := v.g.blockSize
	L := B * lfbBlocks
	n.ptrs = make([]uint64, v.g.ptrs)
	for i := int64(0); i*L < n.size; i++ {
		st := blockHole
		for j := i * lfbBlocks; j < (i+1)*lfbBlocks && j*B < n.size; j++ {
			s := blockData
			if n.block != nil {
				s = n.block(j)
			}
			if s == blockTBZ {
				return fmt.Errorf("testimages: %q: TBZ in a large file block is not generated", n.path)
			}
			st = max(st, s)
		}
		if st == blockHole {
			n.holes++
			n.mark(i*L, L, "hole")
			continue
		}
		first, err := alloc.run(lfbBlocks, lfbBlocks)
		if err != nil {
			return err
		}
		for j := int64(0); j < lfbBlocks; j++ {
			v.used[first+j] = true
			if idx := i*lfbBlocks + j; idx*B < n.size {
				v.data = append(v.data, dataBlock{first + j, n, idx})
			}
		}
		v.usedBlocks += lfbBlocks
		n.numBlocks++
		n.ptrs[i] = 7 | uint64(first/lfbBlocks)<<15
		n.allocated += min(L, n.size-i*L)
		n.mark(i*L, L, "data")
	}
	return nil
}
