package testimages

import (
	"fmt"
	"math/bits"
)

// Storage decisions and block allocation.

// newRes makes a resource file with the given number of cluster groups.
func (v *vol) newRes(name string, geom resGeom, groups int64) *resFile {
	size := 0x10000 + groups*v.g.groupSize(geom)
	return &resFile{name: name, geom: geom, groups: groups, nblocks: (size + v.g.blockSize - 1) / v.g.blockSize}
}

func (f *resFile) capacity() int64 { return f.groups * f.geom.cpg * f.geom.rpc }

// allocSB hands out the next sub-block.
func (v *vol) allocSB() (int64, error) {
	if v.nextSB >= v.sbc.capacity() {
		return 0, fmt.Errorf("testimages: more than %d sub-blocks needed", v.sbc.capacity())
	}
	v.nextSB++
	return v.nextSB - 1, nil
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

// decide picks n's storage form (vmfs-format.md §8) from its size and the
// requested layout.
func (v *vol) decide(n *node) error {
	g := v.g
	B := g.blockSize
	P := g.ptrsPerBlock()
	nb := (n.size + B - 1) / B
	want := n.layout
	if want == "" {
		switch {
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
	le32(m, 0x04, 1)
	nlink := uint32(1)
	if n.typ == fdDir {
		nlink = 2
	}
	le32(m, 0x08, nlink)
	le32(m, 0x0C, n.typ)
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
	}
	if n.used == "lfb" {
		le32(m, 0x8C, uint32(n.numBlocks)) // numLFB
	}
	if g.vmfs >= 5 {
		le32(m, 0x6C, 20)
		m[0x89] = byte(bits.TrailingZeros64(uint64(n.fdBlock)))
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

// clusterHeaders writes the cluster headers of the VMFS3/5 resource files:
// a lock block (type 0x10C00000 + resource type + 1, its own address) and
// the metadata {clusterNum, total, free, nextFree} with a bitmap whose set
// bits are free resources (vmfs-format.md §6.1). Readers need them only for
// free-space accounting; VMFS6's layout of them is not known well enough to
// write.
func (v *vol) clusterHeaders() {
	if v.g.vmfs == 6 {
		return
	}
	type res struct {
		f    *resFile
		typ  uint32
		n    int64 // resources described
		used func(i int64) bool
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
	list := []res{
		{v.fbb, 2, total, func(i int64) bool { return v.used[i] }},
		{v.sbc, 3, v.sbc.capacity(), func(i int64) bool { return i < v.nextSB }},
		{v.pbc, 4, v.pbc.capacity(), func(i int64) bool { return i < v.nextPB }},
		{v.fdc, 5, v.fdc.capacity(), func(i int64) bool { return fds[i] }},
	}
	H := v.g.clusterH
	for _, r := range list {
		geom := r.f.geom
		if r.f == v.fbb {
			geom = v.g.fbb
		}
		clusters := (r.n + geom.rpc - 1) / geom.rpc
		for c := int64(0); c < clusters; c++ {
			g, k := c/geom.cpg, c%geom.cpg
			off := 0x10000 + g*v.g.groupSize(geom) + k*H
			logical := r.f.first*v.g.blockSize + off
			b := make([]byte, H)
			le32(b, 0, 0x10C00000+r.typ)
			le64(b, 4, uint64(logical))
			m := b[H/2:]
			items := min(geom.rpc, r.n-c*geom.rpc)
			var free int64
			next := int64(-1)
			for i := int64(0); i < items; i++ {
				if !r.used(c*geom.rpc + i) {
					free++
					m[16+i/8] |= 1 << (i % 8)
					if next < 0 {
						next = i
					}
				}
			}
			le32(m, 0, uint32(c))
			le32(m, 4, uint32(items))
			le32(m, 8, uint32(free))
			le32(m, 12, uint32(max(next, 0)))
			v.writes = append(v.writes, write{logical, b})
		}
	}
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
