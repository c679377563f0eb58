package cli

// The corruption suite (issue 8): generated VMFS5 and VMFS6 volumes are
// damaged one way at a time — a byte flipped or a 512-byte sector zeroed
// inside each metadata structure, or the image truncated — and every
// user-facing command runs on each variant in-process. For every command:
// no panic, no hang (10 s), bounded allocation, and either success or an
// error that names a structure and a place (see locatedError).
//
// Metadata positions are never hard-coded: the LVM and FS descriptor are
// found through the LVM header fields (vmfs-format.md §3, §4); FDs by their
// lock blocks, which record their own logical offset (§7); everything else
// (resource headers, pointer blocks, directory blocks, delta headers and
// tables) by reading the file through package vmfs on the pristine image and
// finding those bytes on the device.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

const (
	corruptCmdTimeout = 10 * time.Second
	corruptAllocLimit = 256 << 20
	pristineChunk     = 64 << 10
	sect              = 512
)

// corruptSpec is a trimmed Sample: every address form (resident,
// sub-block, blocks, single and double indirect, holes, TBZ), nested
// directories, a symlink, small thin/lazy/eager disks, and both delta
// formats on each version.
func corruptSpec(ver int) testimages.Spec {
	s := testimages.Sample(ver)
	s.Disks = []testimages.DiskSpec{
		{Path: "vm1/vm1.vmdk", Type: testimages.Thin, Size: 8 << 20, Fill: 30},
		{Path: "vm2/vm2.vmdk", Type: testimages.Lazy, Size: 4 << 20, Fill: 50},
		{Path: "vm3/vm3.vmdk", Type: testimages.Eager, Size: 2 << 20, Fill: -1},
	}
	other := testimages.SESparse
	if ver == 6 {
		other = testimages.COWD
	}
	s.Snapshots = []testimages.SnapshotSpec{
		{Base: "vm1/vm1.vmdk", Fill: 5}, {Base: "vm1/vm1.vmdk", Fill: 5},
		{Base: "vm2/vm2.vmdk", Fill: 10, Delta: other},
	}
	// pointer-sparse.bin is 270+ MiB of mostly holes: cat would stream
	// zeros for every variant that targets it.
	files := s.Files[:0]
	for _, f := range s.Files {
		if f.Path != "files/pointer-sparse.bin" {
			files = append(files, f)
		}
	}
	s.Files = files
	return s
}

// pristine is a built image held as its non-zero 64 KiB chunks.
type pristine struct {
	ver    int
	path   string // the built image (never modified)
	size   int64
	chunks map[int64][]byte
	man    *testimages.Manifest
	delta  int64 // device offset - logical offset (single linear extent)
	seed   maphash.Seed
	sector map[uint64]int64 // hash of a non-zero sector -> device offset; -1 if not unique
}

func loadPristine(t *testing.T, ver int, dir string) *pristine {
	t.Helper()
	p := &pristine{ver: ver, path: filepath.Join(dir, fmt.Sprintf("pristine%d.img", ver)), chunks: map[int64][]byte{}, seed: maphash.MakeSeed(), sector: map[uint64]int64{}}
	man, err := testimages.Build(corruptSpec(ver), p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.man = man
	f, err := os.Open(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	p.size = st.Size()
	buf := make([]byte, pristineChunk)
	for off := int64(0); off < p.size; off += pristineChunk {
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if allZeroBytes(buf[:n]) {
			continue
		}
		p.chunks[off] = bytes.Clone(buf[:n])
		for s := 0; s+sect <= n; s += sect {
			b := buf[s : s+sect]
			if allZeroBytes(b) {
				continue
			}
			h := maphash.Bytes(p.seed, b)
			if _, dup := p.sector[h]; dup {
				p.sector[h] = -1
			} else {
				p.sector[h] = off + int64(s)
			}
		}
	}
	return p
}

func allZeroBytes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// readAt reads the pristine image.
func (p *pristine) readAt(b []byte, off int64) {
	clear(b)
	for i := 0; i < len(b); {
		o := off + int64(i)
		base := o - o%pristineChunk
		k := min(len(b)-i, int(base+pristineChunk-o))
		if c, ok := p.chunks[base]; ok && o-base < int64(len(c)) {
			copy(b[i:i+k], c[o-base:])
		}
		i += k
	}
}

func (p *pristine) bytesAt(off int64, n int) []byte {
	b := make([]byte, n)
	p.readAt(b, off)
	return b
}

// locate returns the device offset of a 512-byte non-zero sector with the
// given content, if it occurs exactly once on the image.
func (p *pristine) locate(b []byte) (int64, bool) {
	if len(b) != sect || allZeroBytes(b) {
		return 0, false
	}
	off, ok := p.sector[maphash.Bytes(p.seed, b)]
	return off, ok && off >= 0
}

// mutation is one way of damaging the image.
type mutation struct {
	off   int64  // device offset
	patch []byte // bytes written at off (flip or zero sector or edit)
	trunc int64  // > 0 or == 0 with truncate: truncate the image to this length
	isTr  bool
}

// variant is a mutation and the commands that judge it.
type variant struct {
	name    string
	muts    []mutation
	cat     string // file to cat
	disk    string // disk to convert
	wantErr string // when set, convert (or ls/cat) must fail with this text
}

var flipMasks = []byte{0xff, 0x01, 0x80, 0x10, 0x40, 0x08}

// flip flips one byte of the pristine image at off.
func (p *pristine) flip(off int64, i int) mutation {
	b := p.bytesAt(off, 1)
	b[0] ^= flipMasks[i%len(flipMasks)]
	return mutation{off: off, patch: b}
}

func zeroSector(off int64) mutation {
	off -= off % sect
	return mutation{off: off, patch: make([]byte, sect)}
}

// structure collects variants about one structure at a device range.
type planner struct {
	p    *pristine
	vars []variant
	n    int
}

// flips adds single-byte flips at start+rel for each rel.
func (pl *planner) flips(what string, start int64, rels []int64, cat, disk string) {
	for _, r := range rels {
		pl.n++
		pl.vars = append(pl.vars, variant{
			name: fmt.Sprintf("VMFS%d %s +0x%x flip (device 0x%x)", pl.p.ver, what, r, start+r),
			muts: []mutation{pl.p.flip(start+r, pl.n)}, cat: cat, disk: disk,
		})
	}
}

func (pl *planner) zero(what string, off int64, cat, disk string) {
	pl.vars = append(pl.vars, variant{
		name: fmt.Sprintf("VMFS%d %s zero sector 0x%x", pl.p.ver, what, off-off%sect),
		muts: []mutation{zeroSector(off)}, cat: cat, disk: disk,
	})
}

func steps(from, to, step int64) []int64 {
	var r []int64
	for i := from; i < to; i += step {
		r = append(r, i)
	}
	return r
}

// nonZeroWords lists the offsets of non-zero w-byte words in b (at most max,
// spread over b).
func nonZeroWords(b []byte, w int, max int) []int64 {
	var all []int64
	for i := 0; i+w <= len(b); i += w {
		if !allZeroBytes(b[i : i+w]) {
			all = append(all, int64(i))
		}
	}
	if len(all) <= max {
		return all
	}
	out := make([]int64, 0, max)
	for k := range max {
		out = append(out, all[k*len(all)/max])
	}
	return out
}

const (
	defaultCat  = "files/double.bin"
	defaultDisk = "vm1/vm1-000002.vmdk"
)

// plan derives the metadata positions of p and the variants.
func plan(t *testing.T, p *pristine) []variant {
	t.Helper()
	pl := &planner{p: p}
	le := binary.LittleEndian
	// LVM device header, volume descriptor, PE bitmap and table (§3).
	const lvm = 0x100000
	hdr := p.bytesAt(lvm, 0x200)
	if le.Uint32(hdr) != 0xC001D00D {
		t.Fatalf("VMFS%d: no LVM header", p.ver)
	}
	H := int64(0x200)
	bms := int64(0x400)
	if le.Uint32(hdr[4:]) == 6 {
		H = int64(le.Uint32(hdr[0xCA:]))
		bms = max(bms, H)
	}
	pl.flips("LVM header", lvm, steps(0, 0xD6, 3), defaultCat, defaultDisk)
	pl.zero("LVM header", lvm, defaultCat, defaultDisk)
	pl.flips("volume descriptor", lvm+H, steps(0, 0x114, 6), defaultCat, defaultDisk)
	pl.zero("volume descriptor", lvm+H, defaultCat, defaultDisk)
	bitmap := lvm + H + 0x80000
	pe := bitmap + bms
	pl.flips("PE bitmap", bitmap, []int64{0}, defaultCat, defaultDisk)
	pl.flips("PE table entry 0", pe, steps(0, 0x25, 2), defaultCat, defaultDisk)
	pl.zero("PE table", pe, defaultCat, defaultDisk)
	ent := p.bytesAt(pe, 0x25)
	p.delta = int64(le.Uint64(ent[0x09:])) - int64(le.Uint64(ent[0x11:]))
	// FS descriptor (§4).
	fsd := 0x200000 + p.delta
	if le.Uint32(p.bytesAt(fsd, 4)) != 0x2FABF15E {
		t.Fatalf("VMFS%d: no FS descriptor at device 0x%x", p.ver, fsd)
	}
	pl.flips("FS descriptor", fsd, steps(0, 0x154, 5), defaultCat, defaultDisk)
	pl.zero("FS descriptor", fsd, defaultCat, defaultDisk)

	// FDs, found by their lock blocks (§7): u32 0x10C00001 then u64 own
	// logical offset; the metadata (descAddr first) follows at meta.
	md := int64(0x200)
	fdSize := int64(0x800)
	arrOff, arrW := int64(0x400), 4
	resOff := int64(0x400)
	if p.ver == 6 {
		md = H
		fdSize = 2 * md
		arrOff, arrW = 0x1600, 8
		resOff = md + 0x200
	}
	byFD := map[uint32]testimages.ManifestFile{0x4: {Path: ".", Type: "dir"}}
	for _, f := range p.man.Files {
		var a uint32
		fmt.Sscanf(f.FD, "0x%x", &a)
		byFD[a] = f
	}
	fdPos := map[string]int64{}
	var offs []int64
	for off := range p.chunks {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	for _, base := range offs {
		c := p.chunks[base]
		for s := 0; s+int(fdSize) <= len(c); s += sect {
			if le.Uint32(c[s:]) != 0x10C00001 || int64(le.Uint64(c[s+4:])) != base+int64(s)-p.delta {
				continue
			}
			addr := le.Uint32(c[s+int(md):])
			f, ok := byFD[addr]
			if !ok {
				continue
			}
			fdPos[f.Path] = base + int64(s)
		}
	}
	if len(fdPos) != len(byFD) {
		t.Fatalf("VMFS%d: found %d of %d FDs", p.ver, len(fdPos), len(byFD))
	}
	metaRels := []int64{0x00, 0x01, 0x04, 0x0C, 0x14, 0x15, 0x17, 0x1C, 0x1E, 0x24, 0x44, 0x45, 0x5C, 0x89}
	var paths []string
	for path := range fdPos {
		paths = append(paths, path)
	}
	sort.Strings(paths)
	for i, path := range paths {
		f, pos := byFD0(byFD, path), fdPos[path]
		cat, disk := catFor(f), diskFor(p.man, path)
		what := fmt.Sprintf("FD %s (%s)", f.FD, path)
		var rels []int64
		// The lock block: type and own address.
		rels = append(rels, 0, 3, 4+int64(i%4))
		for k, r := range metaRels {
			if k%2 == i%2 || f.System || path == "." {
				rels = append(rels, md+r)
			}
		}
		// The first entries of the block array (or the resident data).
		rels = append(rels, arrOff, arrOff+1, arrOff+int64(arrW)-1)
		if f.Layout == "resident" && f.Size > 0 {
			rels = append(rels, resOff+f.Size/2)
		}
		pl.flips(what, pos, rels, cat, disk)
		if i%3 == 0 || f.System || path == "." {
			pl.zero(what+" metadata", pos+md, cat, disk)
		}
		if f.Layout == "resident" && strings.HasSuffix(path, ".vmdk") {
			descriptorFlips(pl, pos+resOff, f, cat, disk)
		}
	}

	// Everything else is found by reading files on the pristine volume.
	v, err := vmfs.OpenFiles(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	read := func(path string, off int64, n int) []byte {
		f, err := v.Open(path)
		if err != nil {
			t.Fatalf("VMFS%d: %v", p.ver, err)
		}
		defer f.Close()
		b := make([]byte, n)
		k, err := f.ReadAt(b, off)
		if err != nil && err != io.EOF {
			t.Fatalf("VMFS%d: %s: %v", p.ver, path, err)
		}
		return b[:k]
	}
	// Resource file headers (§6.1), and the first cluster header.
	for _, f := range p.man.Files {
		if !f.System || f.Path == ".vh.sf" {
			continue
		}
		if f.Type == "dir" {
			// .sdd.sf, as ESXi lays it out: a directory, not a resource
			// file (VMFS5: resident in its FD, which the FD flips cover).
			if pos, ok := p.locate(read(f.Path, 0, min(sect, int(f.Size)))); ok && f.Size >= sect {
				pl.flips("directory header of "+f.Path, pos, steps(0, 0x40, 4), defaultCat, defaultDisk)
			}
			continue
		}
		if pos, ok := p.locate(read(f.Path, 0, sect)); ok {
			pl.flips("resource header of "+f.Path, pos, steps(0, 0x44, 4), defaultCat, defaultDisk)
			pl.zero("resource header of "+f.Path, pos, defaultCat, defaultDisk)
		} else {
			t.Errorf("VMFS%d: cannot locate the resource header of %s", p.ver, f.Path)
		}
		if pos, ok := p.locate(read(f.Path, 0x10000, sect)); ok {
			pl.flips("cluster header of "+f.Path, pos, []int64{0, 4}, defaultCat, defaultDisk)
		}
	}
	// Directory blocks: linear (VMFS5) and hashed (VMFS6).
	dirs := 0
	for _, f := range append([]testimages.ManifestFile{{Path: ".", Type: "dir", Size: 0x12000}}, p.man.Files...) {
		if f.Type != "dir" {
			continue
		}
		size := f.Size
		if f.Path == "." {
			st, err := v.Stat(".")
			if err != nil {
				t.Fatal(err)
			}
			size = st.Size
		}
		b := read(f.Path, 0, int(size))
		// A directory smaller than a sector shares it with zeros.
		b = append(b, make([]byte, (sect-len(b)%sect)%sect)...)
		found := 0
		for s := 0; s+sect <= len(b); s += sect {
			pos, ok := p.locate(b[s : s+sect])
			if !ok {
				continue
			}
			found++
			cat := defaultCat
			// A child of this directory: the entries in this sector.
			for _, g := range p.man.Files {
				if g.Type == "file" && !g.System && filepath.Dir(g.Path) == strings.TrimPrefix(f.Path, ".") {
					cat = g.Path
					break
				}
			}
			what := fmt.Sprintf("directory %s block +0x%x", f.Path, s)
			pl.flips(what, pos, nonZeroWords(b[s:s+sect], 4, 6), cat, defaultDisk)
			if found%2 == 1 {
				pl.zero(what, pos, cat, defaultDisk)
			}
		}
		if found == 0 {
			t.Errorf("VMFS%d: no sector of directory %s located", p.ver, f.Path)
		}
		dirs += found
	}
	// Pointer blocks of the indirect files: the FD's first array entry is
	// a pointer block address (§5, §8); read the block through the
	// resource file that holds it.
	for _, path := range []string{"files/pointer-dense.bin", "files/double.bin"} {
		pos := fdPos[path]
		addr := le.Uint64(append(p.bytesAt(pos+arrOff, arrW), make([]byte, 8-arrW)...))
		res, fileOff := ptrBlockFileOffset(t, p, read, addr)
		b := read(res, fileOff, sect)
		pbPos, ok := p.locate(b)
		if !ok {
			t.Fatalf("VMFS%d: cannot locate pointer block 0x%x of %s", p.ver, addr, path)
		}
		what := fmt.Sprintf("pointer block 0x%x of %s", addr, path)
		pl.flips(what, pbPos, nonZeroWords(b, arrW, 8), path, defaultDisk)
		pl.zero(what, pbPos, path, defaultDisk)
		// The loop: an entry of the pointer block points back at the
		// pointer block itself.
		// Entry 1 is used by the single-indirect file (3 blocks); the
		// double-indirect one only uses entry 0 of its top block.
		loop := bytes.Clone(b)
		at := arrW
		if path == "files/double.bin" {
			at = 0
		}
		if arrW == 4 {
			le.PutUint32(loop[at:], uint32(addr))
		} else {
			le.PutUint64(loop[at:], addr)
		}
		pl.vars = append(pl.vars, variant{
			name: fmt.Sprintf("VMFS%d pointer-block loop in %s (0x%x -> itself)", p.ver, path, addr),
			muts: []mutation{{off: pbPos, patch: loop}}, cat: path, disk: defaultDisk, wantErr: "pointer block",
		})
	}
	// Delta headers, grain directories and tables: metadata-like sectors
	// (at least a quarter zero bytes) in the first 256 KiB of each delta.
	for _, d := range p.man.Disks {
		if d.Provisioning != "cowd" && d.Provisioning != "sesparse" {
			continue
		}
		b := read(d.Extent, 0, 256<<10)
		k := 0
		for s := 0; s+sect <= len(b); s += sect {
			sec := b[s : s+sect]
			if allZeroBytes(sec) || bytes.Count(sec, []byte{0}) < sect/4 {
				continue
			}
			pos, ok := p.locate(sec)
			if !ok {
				continue
			}
			what := fmt.Sprintf("%s %s +0x%x", d.Provisioning, d.Extent, s)
			n := 6
			if s == 0 {
				n = 24 // the header
			}
			pl.flips(what, pos, nonZeroWords(sec, 1, n), d.Extent, d.Path)
			if k%2 == 0 {
				pl.zero(what, pos, d.Extent, d.Path)
			}
			k++
		}
		if k == 0 {
			t.Errorf("VMFS%d: no metadata sector of %s located", p.ver, d.Extent)
		}
	}
	// Parent-chain loops: vm1-000001's parent is vm1-000002 (whose parent
	// is vm1-000001), and a delta that is its own parent.
	for _, tc := range []struct{ desc, parent string }{
		{"vm1/vm1-000001.vmdk", "vm1/vm1-000002.vmdk"},
		{"vm1/vm1-000002.vmdk", "vm1/vm1-000002.vmdk"},
	} {
		f := byFD0(byFD, tc.desc)
		pos := fdPos[tc.desc]
		text := string(p.bytesAt(pos+resOff, int(f.Size)))
		parentText := string(p.bytesAt(fdPos[tc.parent]+resOff, int(byFD0(byFD, tc.parent).Size)))
		edited := setDescField(setDescField(text, "parentFileNameHint", `"`+filepath.Base(tc.parent)+`"`),
			"parentCID", descField(parentText, "CID"))
		size := make([]byte, 8)
		le.PutUint64(size, uint64(len(edited)))
		pl.vars = append(pl.vars, variant{
			name: fmt.Sprintf("VMFS%d parent-chain loop: %s -> %s", p.ver, tc.desc, tc.parent),
			muts: []mutation{{off: pos + resOff, patch: []byte(edited)}, {off: pos + md + 0x14, patch: size}},
			cat:  tc.desc, disk: "vm1/vm1-000002.vmdk", wantErr: "loop",
		})
	}
	// Truncations: at every located structure and at spread lengths.
	lens := []int64{0, 1, sect, 0x100000, 0x100000 + 0x100, lvm + H + 0x80, pe + 0x10, fsd, fsd + 0x100}
	for _, path := range paths {
		if len(lens) < 40 && (byFD0(byFD, path).System || path == "." || strings.HasSuffix(path, ".vmdk")) {
			lens = append(lens, fdPos[path]+md/2, fdPos[path]+md+0x40)
		}
	}
	for k := int64(1); k <= 16; k++ {
		lens = append(lens, (p.size*k/17)&^(sect-1)+int64(k%3)*7)
	}
	lens = append(lens, p.size-sect, p.size-1)
	for _, l := range lens {
		pl.vars = append(pl.vars, variant{
			name: fmt.Sprintf("VMFS%d truncated to %d (0x%x) bytes", p.ver, l, l),
			muts: []mutation{{trunc: l, isTr: true}}, cat: defaultCat, disk: defaultDisk,
		})
	}
	// A directory cycle: files/nested/deeper becomes files.
	if v := dirCycle(t, p, read, fdPos, byFD); v != nil {
		pl.vars = append(pl.vars, *v)
	}
	t.Logf("VMFS%d: %d variants (%d FDs, %d directory sectors)", p.ver, len(pl.vars), len(fdPos), dirs)
	return pl.vars
}

func byFD0(m map[uint32]testimages.ManifestFile, path string) testimages.ManifestFile {
	for _, f := range m {
		if f.Path == path {
			return f
		}
	}
	return testimages.ManifestFile{}
}

// catFor is the file cat reads when f's FD is damaged.
func catFor(f testimages.ManifestFile) string {
	if f.Type == "file" && !f.System && f.Path != "files/pointer-sparse.bin" {
		return f.Path
	}
	if f.Type == "symlink" {
		return f.Path
	}
	return defaultCat
}

// diskFor is the disk convert reads when path's FD is damaged: the leaf of
// a chain that uses path.
func diskFor(m *testimages.Manifest, path string) string {
	for _, d := range m.Disks {
		if !d.Leaf {
			continue
		}
		for _, c := range d.Chain {
			if c == path || strings.TrimSuffix(c, ".vmdk") == strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(path, ".vmdk"), "-flat"), "-delta") ||
				filepath.Dir(c) == path {
				return d.Path
			}
		}
		if d.Extent == path {
			return d.Path
		}
		for _, c := range d.Chain {
			for _, dd := range m.Disks {
				if dd.Path == c && dd.Extent == path {
					return d.Path
				}
			}
		}
	}
	return defaultDisk
}

func descField(text, key string) string {
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func setDescField(text, key, val string) string {
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if k, _, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == key {
			lines[i] = key + "=" + val
		}
	}
	return strings.Join(lines, "\n")
}

// descriptorFlips damages the text of a resident descriptor at its
// interesting fields.
func descriptorFlips(pl *planner, start int64, f testimages.ManifestFile, cat, disk string) {
	text := string(pl.p.bytesAt(start, int(f.Size)))
	var rels []int64
	for _, key := range []string{"version", "CID", "parentCID", "createType", "parentFileNameHint", "RW ", "ddb.virtualHWVersion"} {
		if i := strings.Index(text, key); i >= 0 {
			rels = append(rels, int64(i), int64(i+len(key)+2))
		}
	}
	pl.flips("descriptor "+f.Path, start, rels, cat, disk)
}

// ptrBlockFileOffset resolves a pointer-block address to (resource file,
// offset in it), per vmfs-format.md §5 and §6.1.
func ptrBlockFileOffset(t *testing.T, p *pristine, read func(string, int64, int) []byte, addr uint64) (string, int64) {
	le := binary.LittleEndian
	var res string
	var cluster, r uint64
	H := int64(0x400)
	switch {
	case p.ver != 6 && addr&7 == 3:
		res, cluster, r = ".pbc.sf", (addr>>6)&(1<<22-1), addr>>28&0xf
	case p.ver != 6 && addr&7 == 5:
		res, cluster, r = ".pb2.sf", (addr>>6)&(1<<22-1), addr>>28&0xf
	case p.ver == 6:
		names := map[uint64]string{2: ".sbc.sf", 3: ".pbc.sf", 5: ".pb2.sf"}
		res, cluster, r = names[addr&7], (addr>>6)&(1<<36-1), addr>>56
		H = 2 * 0x1000
	}
	if res == "" {
		t.Fatalf("VMFS%d: address 0x%x is not a pointer block", p.ver, addr)
	}
	h := read(res, 0, 0x20)
	rpc, cpg := uint64(le.Uint32(h[0:])), uint64(le.Uint32(h[4:]))
	cgOff, rsz, cgSize := int64(le.Uint32(h[8:])), int64(le.Uint32(h[0xC:])), int64(le.Uint32(h[0x10:]))
	g, k := cluster/cpg, cluster%cpg
	return res, cgOff + int64(g)*cgSize + int64(cpg)*H + int64(k*rpc)*rsz + int64(r)*rsz
}

// dirCycle makes files/nested/deeper an alias of files (an ancestor): a
// directory walk must stop instead of recursing forever.
func dirCycle(t *testing.T, p *pristine, read func(string, int64, int) []byte, fdPos map[string]int64, byFD map[uint32]testimages.ManifestFile) *variant {
	le := binary.LittleEndian
	files := byFD0(byFD, "files")
	deeper := byFD0(byFD, "files/nested/deeper")
	var filesAddr, deeperAddr uint32
	fmt.Sscanf(files.FD, "0x%x", &filesAddr)
	fmt.Sscanf(deeper.FD, "0x%x", &deeperAddr)
	md := int64(0x200)
	if p.ver == 6 {
		md = 0x1000
	}
	gen := le.Uint32(p.bytesAt(fdPos["files"]+md+4, 4))
	b := read("files/nested", 0, int(byFD0(byFD, "files/nested").Size))
	b = append(b, make([]byte, (sect-len(b)%sect)%sect)...)
	for s := 0; s+sect <= len(b); s += sect {
		sec := b[s : s+sect]
		i := bytes.Index(sec, []byte("deeper\x00"))
		if i < 0 {
			continue
		}
		// The entry is u32 type, u32 FD, u32 generation, [u32 hash, u64
		// offset,] name: find the FD field just before the name.
		for j := i - 4; j >= 4; j -= 4 {
			if le.Uint32(sec[j:]) == deeperAddr {
				pos, ok := p.locate(sec)
				if !ok {
					return nil
				}
				patch := make([]byte, 8)
				le.PutUint32(patch, filesAddr)
				le.PutUint32(patch[4:], gen)
				return &variant{
					name: fmt.Sprintf("VMFS%d directory cycle: files/nested/deeper -> files", p.ver),
					muts: []mutation{{off: pos + int64(j), patch: patch}}, cat: defaultCat, disk: defaultDisk,
				}
			}
		}
	}
	t.Errorf("VMFS%d: entry of files/nested/deeper not found", p.ver)
	return nil
}

// locatedError is the rule every error must follow: it names a structure
// (one of structureWords) and a place (an offset, a hex address, or a
// descriptor line), or it is a plain not-found, which a damaged name or
// directory entry legitimately produces.
var (
	structureWords = []string{"header", "descriptor", "fd ", "fd 0x", "pointer block", "directory", "table", "grain",
		"extent", "lvm", "pe ", "volume", "resource", "cluster", "bitmap", "entry", "chain", "parent", "journal",
		"backmap", "sub-block", "block", "inode", "sector", "device", "image"}
	placeRE = regexp.MustCompile(`0x[0-9a-f]+|offset \d+|line \d+`)
)

func locatedError(stderr string) bool {
	s := strings.ToLower(stderr)
	if !placeRE.MatchString(s) {
		return false
	}
	for _, w := range structureWords {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

func notFoundError(stderr string) bool {
	s := strings.ToLower(stderr)
	return strings.Contains(s, "no such file or directory") || strings.Contains(s, "not a directory")
}

type cmdResult struct {
	code   int
	sum    string
	stderr string
}

// runGuarded runs the CLI in-process with a timeout, catching a panic of
// the command's goroutine and measuring what it allocates.
func runGuarded(t *testing.T, name string, args ...string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), corruptCmdTimeout)
	defer cancel()
	h := sha256.New()
	var errb bytes.Buffer
	var res cmdResult
	var panicked string
	done := make(chan struct{})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				panicked = fmt.Sprintf("%v\n%s", r, debug.Stack())
			}
		}()
		res.code = run(ctx, append([]string{"vmfs2vhd"}, args...), h, &errb)
	}()
	select {
	case <-done:
	case <-time.After(corruptCmdTimeout + 2*time.Second):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%s: %v: hangs (no return within %v)\n%s", name, args, corruptCmdTimeout, buf)
	}
	runtime.ReadMemStats(&after)
	if panicked != "" {
		t.Fatalf("%s: %v: panic: %s", name, args, panicked)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > corruptAllocLimit {
		t.Errorf("%s: %v: allocated %d MiB (limit %d MiB)", name, args, d>>20, corruptAllocLimit>>20)
	}
	res.sum = hex.EncodeToString(h.Sum(nil))
	res.stderr = errb.String()
	if ctx.Err() != nil {
		t.Errorf("%s: %v: ran into the %v timeout: %s", name, args, corruptCmdTimeout, res.stderr)
	}
	return res
}

// scratch is the image the variants damage, restored after each.
type scratch struct {
	p    *pristine
	f    *os.File
	path string
}

func newScratch(t *testing.T, p *pristine, dir string) *scratch {
	path := filepath.Join(dir, fmt.Sprintf("vmfs%d.img", p.ver))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s := &scratch{p: p, f: f, path: path}
	s.restoreFrom(t, 0)
	return s
}

// restoreFrom rewrites the image from off to its end.
func (s *scratch) restoreFrom(t *testing.T, off int64) {
	if err := s.f.Truncate(s.p.size); err != nil {
		t.Fatal(err)
	}
	for base, c := range s.p.chunks {
		if base+int64(len(c)) <= off {
			continue
		}
		lo := max(base, off)
		if _, err := s.f.WriteAt(c[lo-base:], lo); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *scratch) apply(t *testing.T, muts []mutation) {
	for _, m := range muts {
		if m.isTr {
			if err := s.f.Truncate(m.trunc); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := s.f.WriteAt(m.patch, m.off); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *scratch) undo(t *testing.T, muts []mutation) {
	for _, m := range muts {
		if m.isTr {
			// Zero what was cut off, then put the data back.
			if err := s.f.Truncate(m.trunc); err != nil {
				t.Fatal(err)
			}
			s.restoreFrom(t, m.trunc)
			continue
		}
		if _, err := s.f.WriteAt(s.p.bytesAt(m.off, len(m.patch)), m.off); err != nil {
			t.Fatal(err)
		}
	}
}

type suiteStats struct {
	variants, runs, ok, errs, notFound, wrongData int
}

// judge runs the commands of one variant.
func judge(t *testing.T, s *scratch, v variant, st *suiteStats) {
	t.Helper()
	want := map[string]string{}
	for _, f := range s.p.man.Files {
		want[f.Path] = f.SHA256
	}
	for _, d := range s.p.man.Disks {
		want["disk:"+d.Path] = d.SHA256
	}
	type cmd struct {
		args []string
		sum  string
	}
	cmds := []cmd{
		{[]string{"info", s.path}, ""},
		{[]string{"ls", "-l", "-R", s.path}, ""},
		{[]string{"disks", s.path}, ""},
		{[]string{"cat", s.path, v.cat}, want[v.cat]},
		{[]string{"convert", "-q", "-f", "raw", s.path, v.disk, "-"}, want["disk:"+v.disk]},
	}
	sawWant := v.wantErr == ""
	for _, c := range cmds {
		r := runGuarded(t, v.name, c.args...)
		st.runs++
		switch {
		case r.code == 0:
			st.ok++
			if c.sum != "" && r.sum != c.sum {
				// Damaged metadata can legitimately change what a file
				// reads; count it, the suite only asks for no crash.
				st.wrongData++
			}
		case notFoundError(r.stderr):
			st.notFound++
			st.errs++
		default:
			st.errs++
			if !locatedError(r.stderr) {
				t.Errorf("%s: %v: exit %d, error without structure and offset: %s", v.name, c.args[0], r.code, strings.TrimSpace(r.stderr))
			}
		}
		if v.wantErr != "" && r.code != 0 && strings.Contains(strings.ToLower(r.stderr), v.wantErr) {
			if !sawWant {
				t.Logf("%s: %s: %s", v.name, c.args[0], strings.TrimSpace(r.stderr))
			}
			sawWant = true
		}
	}
	if !sawWant {
		t.Errorf("%s: no command reported %q", v.name, v.wantErr)
	}
}

func TestCorruptionSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("corruption suite skipped in -short mode")
	}
	start := time.Now()
	dir := t.TempDir()
	var total suiteStats
	for _, ver := range []int{5, 6} {
		p := loadPristine(t, ver, dir)
		vars := plan(t, p)
		s := newScratch(t, p, dir)
		// The pristine image passes every command with the right data.
		clean := variant{name: fmt.Sprintf("VMFS%d pristine", ver), cat: defaultCat, disk: defaultDisk}
		var st suiteStats
		judge(t, s, clean, &st)
		if st.errs != 0 || st.wrongData != 0 {
			t.Fatalf("VMFS%d: the pristine image fails: %+v", ver, st)
		}
		verbose := os.Getenv("VMFS2VHD_CORRUPT_VERBOSE") != ""
		for _, v := range vars {
			if verbose {
				fmt.Fprintln(os.Stderr, "variant:", v.name)
			}
			s.apply(t, v.muts)
			judge(t, s, v, &st)
			s.undo(t, v.muts)
			st.variants++
		}
		t.Logf("VMFS%d: %d variants, %d command runs: %d ok (%d with other data), %d errors (%d not found)",
			ver, st.variants, st.runs, st.ok, st.wrongData, st.errs, st.notFound)
		total.variants += st.variants
	}
	t.Logf("%d variants in %v", total.variants, time.Since(start).Round(time.Millisecond))
	if total.variants < 1000 {
		t.Errorf("only %d variants, want at least 1000", total.variants)
	}
}

// A damaged entry that makes a directory its own descendant: ls -R lists
// each directory once and says why it stops (it used to recurse forever).
func TestLsDirectoryCycle(t *testing.T) {
	dir := t.TempDir()
	for _, ver := range []int{5, 6} {
		p := loadPristine(t, ver, dir)
		var cycle *variant
		for _, v := range plan(t, p) {
			if strings.Contains(v.name, "directory cycle") {
				cycle = &v
			}
		}
		if cycle == nil {
			t.Fatalf("VMFS%d: no directory-cycle variant", ver)
		}
		s := newScratch(t, p, dir)
		s.apply(t, cycle.muts)
		r := runGuarded(t, cycle.name, "ls", "-R", s.path)
		if r.code != 0 || !strings.Contains(r.stderr, "directory cycle") {
			t.Errorf("%s: ls -R: exit %d, stderr %q; want exit 0 and a warning", cycle.name, r.code, r.stderr)
		}
	}
}
