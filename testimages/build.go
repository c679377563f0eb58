package testimages

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"sort"
	"strings"
)

// Build writes the volume described by spec to out (one extent) or to
// out.0 … out.N-1 (spanned), as sparse files, and returns its manifest.
func Build(spec Spec, out string) (*Manifest, error) {
	m, _, err := build(spec, out)
	return m, err
}

// build is Build that also returns the generator's model, for tests that
// must compare an oracle's output with part of a file.
func build(spec Spec, out string) (*Manifest, *vol, error) {
	if spec.VMFS == 0 {
		spec.VMFS = 5
	}
	if spec.VMFS != 3 && spec.VMFS != 5 && spec.VMFS != 6 {
		return nil, nil, fmt.Errorf("testimages: VMFS version %d: want 3, 5 or 6", spec.VMFS)
	}
	if spec.Extents <= 0 {
		spec.Extents = 1
	}
	if spec.Label == "" {
		spec.Label = "vmfs2vhd-test"
	}
	if spec.HashLimit == 0 {
		spec.HashLimit = 16 << 30
	}
	switch spec.Partition {
	case "", "mbr", "gpt":
	default:
		return nil, nil, fmt.Errorf("testimages: partition %q: want mbr or gpt", spec.Partition)
	}
	g := geometryFor(spec.VMFS)
	v := &vol{g: g, spec: spec}
	v.root = &node{typ: fdDir, mode: 0o1755, layout: "blocks"}

	layers, err := v.addDisks()
	if err != nil {
		return nil, nil, err
	}
	for _, f := range spec.Files {
		if err := v.addFile(f); err != nil {
			return nil, nil, err
		}
	}
	v.addSystemFiles()
	v.assignFDs()
	if int64(len(v.nodes))+9 > v.fdc.capacity() {
		return nil, nil, fmt.Errorf("testimages: %d files exceed the %d FDs the generator lays out", len(v.nodes), v.fdc.capacity())
	}

	// Directory contents depend only on FD numbers.
	for _, n := range v.nodes {
		if n.typ != fdDir {
			continue
		}
		var b []byte
		if g.vmfs == 6 {
			if b, err = v.dirHashed(n); err != nil {
				return nil, nil, err
			}
		} else {
			b = v.dirLinear(n)
		}
		n.size, n.content = int64(len(b)), bytesContent(b)
	}
	for _, n := range v.nodes {
		if n.system {
			continue
		}
		if err := v.decide(n); err != nil {
			return nil, nil, err
		}
	}

	// Volume size: system blocks, the data blocks every file will use, and
	// room for .fbb.sf; at least one 256 MiB PE per extent.
	need := g.fdcStart + v.fdc.blocks() + v.sbc.blocks() + v.pbc.blocks() + v.pb2.blocks() + v.jbc.blocks() + 1 + 4
	for _, n := range v.nodes {
		if n.system || n.zla == zlaResident || n.zla == zlaSubBlock {
			continue
		}
		nb := (n.size + g.blockSize - 1) / g.blockSize
		if n.used == "lfb" {
			need += ((nb+lfbBlocks-1)/lfbBlocks + 1) * lfbBlocks // whole, aligned large blocks
			continue
		}
		for i := int64(0); i < nb; i++ {
			if n.block == nil || n.block(i) != blockHole {
				need++
			}
		}
	}
	ext := int64(spec.Extents)
	perExt := max((need*g.blockSize+ext*peSize-1)/(ext*peSize), 1) // PEs per extent
	if spec.Size > 0 {
		if spec.Size < need*g.blockSize {
			return nil, nil, fmt.Errorf("testimages: volume size %d is too small: %d bytes needed", spec.Size, need*g.blockSize)
		}
		perExt = max(perExt, (spec.Size+ext*peSize-1)/(ext*peSize))
	}
	volSize := perExt * ext * peSize
	blocksPerExt := perExt * peSize / g.blockSize

	// System files first, in extent 0.
	next := int64(0)
	v.vh.first, v.vh.nblocks = 0, g.fdcStart
	next = g.fdcStart
	for _, f := range []*resFile{v.fdc, v.sbc, v.pbc, v.pb2, v.jbc} {
		if f == nil {
			continue
		}
		f.first = next
		next += f.nblocks
	}
	v.fbb.geom = g.fbb
	totalBlocks := volSize / g.blockSize
	if g.vmfs == 6 {
		v.fbb.groups = (totalBlocks + g.fbb.rpc*g.fbb.cpg - 1) / (g.fbb.rpc * g.fbb.cpg)
		v.fbb.nblocks = 2
	} else {
		v.fbb.groups = (totalBlocks + g.fbb.rpc*g.fbb.cpg - 1) / (g.fbb.rpc * g.fbb.cpg)
		v.fbb.nblocks = (0x10000 + v.fbb.groups*g.groupSize(g.fbb) + g.blockSize - 1) / g.blockSize
	}
	v.fbb.first = next
	next += v.fbb.nblocks
	rootBlock := next
	next++
	v.usedBlocks = next
	v.used = make([]bool, totalBlocks)
	for b := int64(0); b < next; b++ {
		v.used[b] = true
	}
	alloc := &blockAllocator{}
	for e := int64(0); e < ext; e++ {
		start := e * blocksPerExt
		if e == 0 {
			start = next
		}
		alloc.cursors = append(alloc.cursors, start)
		alloc.limits = append(alloc.limits, (e+1)*blocksPerExt)
	}

	// Root directory: one file block.
	v.root.ptrs = make([]uint64, g.ptrs)
	v.root.ptrs[0] = g.fbAddr(rootBlock, false)
	v.root.numBlocks, v.root.allocated = 1, v.root.size
	v.root.mark(0, v.root.size, "data")
	v.data = append(v.data, dataBlock{rootBlock, v.root, 0})
	if v.root.size > g.blockSize {
		return nil, nil, fmt.Errorf("testimages: root directory of %d bytes exceeds one block", v.root.size)
	}
	for _, n := range v.nodes {
		if n.system || n == v.root {
			continue
		}
		if err := v.place(n, alloc); err != nil {
			return nil, nil, err
		}
	}
	v.finishSystemFiles(totalBlocks)
	v.clusterHeaders()

	dev, err := v.layoutDevices(out, perExt, volSize)
	if err != nil {
		return nil, nil, err
	}
	if err := v.writeAll(dev); err != nil {
		dev.close()
		return nil, nil, err
	}
	if err := dev.close(); err != nil {
		return nil, nil, err
	}
	m, err := v.manifest(dev, layers, volSize)
	return m, v, err
}

// blocks is the size of f in blocks; 0 for a resource file the version
// does not have.
func (f *resFile) blocks() int64 {
	if f == nil {
		return 0
	}
	return f.nblocks
}

// addDisks creates descriptors, flat extents and deltas.
func (v *vol) addDisks() ([]*layer, error) {
	var layers []*layer
	leaf := map[string]*layer{} // base descriptor → current leaf
	seed := uint64(v.spec.Seed)*0x100000001B3 + 7
	for i, d := range v.spec.Disks {
		if !strings.HasSuffix(d.Path, ".vmdk") {
			return nil, fmt.Errorf("testimages: disk %q: path must end in .vmdk", d.Path)
		}
		if d.Size <= 0 || d.Size%512 != 0 {
			return nil, fmt.Errorf("testimages: disk %q: size %d is not a positive multiple of 512", d.Path, d.Size)
		}
		fill := d.Fill
		switch d.Type {
		case Thin:
			if fill < 0 {
				fill = 0
			}
		case Lazy:
			if fill < 0 {
				fill = 50
			}
		case Eager:
			if fill < 0 {
				fill = 100
			}
		default:
			return nil, fmt.Errorf("testimages: disk %q: type %q: want thin, lazy or eager", d.Path, d.Type)
		}
		s := uint64(d.Seed)
		if s == 0 {
			s = mix64(seed + uint64(i))
		}
		l := &layer{
			desc: d.Path, extent: strings.TrimSuffix(d.Path, ".vmdk") + "-flat.vmdk",
			size: d.Size, seed: s, kind: d.Type, cid: uint32(mix64(s ^ 0xC1D)), blockSize: v.g.blockSize,
		}
		l.runs = scatter(d.Size, fill, s, 512, v.g.blockSize, false)
		if _, dup := leaf[d.Path]; dup {
			return nil, fmt.Errorf("testimages: disk %q given twice", d.Path)
		}
		leaf[d.Path] = l
		layers = append(layers, l)
	}
	count := map[string]int{}
	for i, sn := range v.spec.Snapshots {
		parent := leaf[sn.Base]
		if parent == nil {
			return nil, fmt.Errorf("testimages: snapshot of %q: no such disk", sn.Base)
		}
		kind := sn.Delta
		if kind == "" {
			kind = COWD
			if v.g.vmfs == 6 {
				kind = SESparse
			}
		}
		if kind != COWD && kind != SESparse {
			return nil, fmt.Errorf("testimages: snapshot of %q: delta %q: want cowd or sesparse", sn.Base, kind)
		}
		count[sn.Base]++
		stem := strings.TrimSuffix(sn.Base, ".vmdk") + fmt.Sprintf("-%06d", count[sn.Base])
		s := uint64(sn.Seed)
		if s == 0 {
			s = mix64(seed + 1000 + uint64(i))
		}
		fill := sn.Fill
		if fill < 0 {
			fill = 5
		}
		l := &layer{desc: stem + ".vmdk", size: parent.size, parent: parent, seed: s, kind: kind, cid: uint32(mix64(s ^ 0xC1D))}
		if kind == COWD {
			l.extent, l.grain = stem+"-delta.vmdk", 512
		} else {
			l.extent, l.grain = stem+"-sesparse.vmdk", 4096
		}
		l.runs = scatter(l.size, fill, s, l.grain, l.grain, kind == SESparse)
		parent.child = true
		leaf[sn.Base] = l
		layers = append(layers, l)
	}
	for _, l := range layers {
		desc := l.descriptor()
		if err := v.add(&node{path: l.desc, typ: fdFile, mode: 0o600, size: int64(len(desc)), content: bytesContent(desc)}); err != nil {
			return nil, err
		}
		ext := &node{path: l.extent, typ: fdFile, mode: 0o600, size: l.size}
		if l.parent == nil {
			ext.content, ext.block = l.read, l.baseBlock
			// ESXi gives thick disks large file blocks on VMFS6.
			if l.kind == Eager && v.g.vmfs == 6 && v.spec.Extents <= 1 && l.size >= lfbBlocks*v.g.blockSize {
				ext.layout = "lfb"
			}
		} else {
			var d *deltaFile
			var err error
			if l.kind == COWD {
				d, err = buildCOWD(l)
			} else {
				d, err = buildSESparse(l)
			}
			if err != nil {
				return nil, err
			}
			ext.size, ext.content = d.size(), d.readAt
		}
		if err := v.add(ext); err != nil {
			return nil, err
		}
	}
	return layers, nil
}

// addFile adds a FileSpec.
func (v *vol) addFile(f FileSpec) error {
	n := &node{path: strings.Trim(f.Path, "/"), layout: f.Layout, mode: 0o644}
	switch f.Type {
	case "", "file":
		n.typ, n.size = fdFile, f.Size
		seed := uint64(f.Seed) ^ mix64(uint64(v.spec.Seed)+uint64(len(f.Path)))
		n.content = func(p []byte, off int64) { randFill(p, seed, off) }
		if len(f.Holes) > 0 || len(f.TBZ) > 0 {
			holes, tbz := map[int64]bool{}, map[int64]bool{}
			for _, i := range f.Holes {
				holes[i] = true
			}
			for _, i := range f.TBZ {
				tbz[i] = true
			}
			B := v.g.blockSize
			n.block = func(i int64) blockState {
				switch {
				case holes[i]:
					return blockHole
				case tbz[i]:
					return blockTBZ
				}
				return blockData
			}
			// What is read back: zeros in holes and TBZ blocks.
			n.content = func(p []byte, off int64) {
				randFill(p, seed, off)
				for i := off / B; i*B < off+int64(len(p)); i++ {
					if holes[i] || tbz[i] {
						s, e := max(i*B, off), min((i+1)*B, off+int64(len(p)))
						clear(p[s-off : e-off])
					}
				}
			}
		}
	case "dir":
		n.typ, n.mode = fdDir, 0o755
	case "symlink":
		n.typ, n.mode, n.target = fdSymlink, 0o777, f.Target
		n.size, n.content = int64(len(f.Target)), bytesContent([]byte(f.Target))
	default:
		return fmt.Errorf("testimages: file %q: type %q: want file, dir or symlink", f.Path, f.Type)
	}
	return v.add(n)
}

// addSystemFiles creates the resource files with their fixed FD numbers.
func (v *vol) addSystemFiles() {
	g := v.g
	v.fdc = v.newRes(".fdc.sf", g.fdc, 1)
	v.sbc = v.newRes(".sbc.sf", g.sbc, 1)
	if g.vmfs == 6 {
		v.pbc = v.newRes(".pbc.sf", g.pbc, 0)
		v.pb2 = v.newRes(".pb2.sf", g.pb2, 0)
		v.jbc = v.newRes(".jbc.sf", resGeom{8, 4, 2 * mib}, 0)
	} else {
		v.pbc = v.newRes(".pbc.sf", g.pbc, 1)
		if g.vmfs == 5 {
			v.pb2 = v.newRes(".pb2.sf", g.pb2, 0)
		}
	}
	v.fbb = &resFile{name: ".fbb.sf"}
	v.vh = &resFile{name: ".vh.sf"}
	sys := []struct {
		fd int64
		f  *resFile
	}{{1, v.fbb}, {2, v.fdc}, {3, v.pbc}, {4, v.sbc}, {5, v.vh}, {6, v.pb2}, {8, v.jbc}}
	for _, s := range sys {
		if s.f == nil {
			continue
		}
		n := &node{name: s.f.name, path: s.f.name, typ: fdSys, mode: 0o400, system: true, fd: s.fd, res: s.f, parent: v.root}
		v.root.children = append(v.root.children, n)
	}
}

// finishSystemFiles sets the system FDs' block lists and headers.
func (v *vol) finishSystemFiles(totalBlocks int64) {
	g := v.g
	for _, n := range v.root.children {
		if !n.system {
			continue
		}
		f := n.res
		n.zla, n.fdBlock = zlaDirect, g.blockSize
		n.ptrs = make([]uint64, g.ptrs)
		for i := int64(0); i < f.nblocks; i++ {
			n.ptrs[i] = g.fbAddr(f.first+i, false)
		}
		n.numBlocks = f.nblocks
		n.size = f.nblocks * g.blockSize
		switch f {
		case v.vh:
			// Owns blocks 0 … FDC start−1; no header of its own.
		case v.fbb:
			if g.vmfs == 6 {
				lfb := &resFile{geom: resGeom{16, 8, 0x2000}, groups: (totalBlocks/512 + 127) / 128}
				h := v.resHeader(lfb, (totalBlocks+511)/512)
				le32(h, 0x34, 0x1000) // child (SFB) header offset
				sfb := &resFile{geom: g.fbb, groups: f.groups}
				c := v.resHeader(sfb, totalBlocks)
				le32(c, 0x28, 0x2)
				le32(c, 0x38, 16)
				le32(c, 0x3C, 8)
				le32(c, 0x40, 0x110000)
				f.hdr = make([]byte, 0x1100)
				copy(f.hdr, h)
				copy(f.hdr[0x1000:], c)
				n.size = 0x10000 + f.groups*g.groupSize(g.fbb)
			} else {
				f.hdr = v.resHeader(f, totalBlocks)
				n.size = 0x10000 + f.groups*g.groupSize(g.fbb)
			}
		default:
			f.hdr = v.resHeader(f, f.capacity())
			n.size = 0x10000 + f.groups*g.groupSize(f.geom)
		}
		n.allocated = n.size
		n.runs = nil
		n.mark(0, n.size, "data")
	}
}

// manifest computes the ground truth from what was generated.
func (v *vol) manifest(dev *devices, layers []*layer, volSize int64) (*Manifest, error) {
	m := &Manifest{VMFS: v.g.vmfs, Label: v.spec.Label, UUID: dev.fsUUID, Size: volSize, BlockSize: v.g.blockSize,
		FreeBlocks: volSize/v.g.blockSize - v.usedBlocks}
	for _, p := range dev.paths {
		m.Images = append(m.Images, path.Base(p))
	}
	for _, n := range v.nodes {
		if n == v.root {
			continue
		}
		f := ManifestFile{
			Path: n.path, Size: n.size, Allocated: n.allocated, Layout: n.used,
			FD: fmt.Sprintf("0x%08x", v.g.fdAddr(n.fd)), Holes: n.holes, TBZ: n.numTBZ, System: n.system,
			Map: n.runs,
		}
		switch n.typ {
		case fdDir:
			f.Type = "dir"
		case fdSymlink:
			f.Type, f.Target = "symlink", n.target
		default:
			f.Type = "file"
		}
		if n.system {
			f.Layout, f.Path = "blocks", n.name
		}
		if !n.system && n.size <= v.spec.HashLimit {
			f.SHA256 = hashOf(n.size, n.fill)
		}
		m.Files = append(m.Files, f)
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Path < m.Files[j].Path })
	for _, l := range layers {
		d := ManifestDisk{
			Path: l.desc, VirtualSize: l.size, Allocated: l.allocated(), Provisioning: l.kind,
			Chain: l.chain(), Extent: l.extent, Leaf: !l.child,
		}
		if l.size <= v.spec.HashLimit {
			d.SHA256 = hashOf(l.size, l.read)
		}
		m.Disks = append(m.Disks, d)
	}
	return m, nil
}

func hashOf(size int64, fill func(p []byte, off int64)) string {
	h := sha256.New()
	buf := make([]byte, 4*mib)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		fill(buf[:n], off)
		h.Write(buf[:n])
		off += n
	}
	return hex.EncodeToString(h.Sum(nil))
}
