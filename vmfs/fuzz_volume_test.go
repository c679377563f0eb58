package vmfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

// Whole-volume fuzz targets: a small generated volume (VMFS5, VMFS6, and a
// VMFS5 volume spanning two devices) with fuzz bytes written over it at a
// fuzz position, opened and walked like `ls -R` and `cat` do. Seeds put the
// pristine bytes of each metadata structure at its own position.

// fuzzImage is a generated volume kept on disk (its files are sparse).
type fuzzImage struct {
	devs []io.ReaderAt
	size []int64
}

var (
	fuzzImagesOnce sync.Once
	fuzzImages     []*fuzzImage
	fuzzImagesErr  error
)

func fuzzSpecs() []testimages.Spec {
	var specs []testimages.Spec
	for _, ver := range []int{5, 6} {
		s := testimages.Sample(ver)
		s.Seed += 11
		s.Disks = []testimages.DiskSpec{{Path: "vm1/vm1.vmdk", Type: testimages.Lazy, Size: 4 << 20, Fill: 50}}
		s.Snapshots = nil
		specs = append(specs, s)
	}
	sp := testimages.Sample(5)
	sp.Extents, sp.Seed, sp.Disks, sp.Snapshots = 2, 17, nil, nil
	return append(specs, sp)
}

// loadFuzzImages builds the volumes once per process (the fuzz workers
// run the target function too).
func loadFuzzImages(tb testing.TB) []*fuzzImage {
	fuzzImagesOnce.Do(func() {
		for i, spec := range fuzzSpecs() {
			dir := filepath.Join(tmpRoot, fmt.Sprintf("fuzzvol%d", i))
			if fuzzImagesErr = os.MkdirAll(dir, 0o755); fuzzImagesErr != nil {
				return
			}
			m, err := testimages.Build(spec, filepath.Join(dir, "img"))
			if err != nil {
				fuzzImagesErr = err
				return
			}
			im := &fuzzImage{}
			for _, name := range m.Images {
				f, err := os.Open(filepath.Join(dir, name))
				if err != nil {
					fuzzImagesErr = err
					return
				}
				st, _ := f.Stat()
				im.devs = append(im.devs, f)
				im.size = append(im.size, st.Size())
			}
			fuzzImages = append(fuzzImages, im)
		}
		// Hand-built layouts whose system files are mapped as ESXi maps
		// them (layout_test.go): .sbc.sf through PB2, .fdc.sf through
		// pointer blocks and over non-contiguous blocks, directories in
		// sub-blocks.
		for _, l := range fuzzLayouts() {
			tv, _ := buildLayout(tb, l)
			mem := tv.mem[:tv.next*tBS] // the blocks in use
			fuzzImages = append(fuzzImages, &fuzzImage{devs: []io.ReaderAt{bytes.NewReader(mem)}, size: []int64{int64(len(mem))}})
		}
	})
	if fuzzImagesErr != nil {
		tb.Fatalf("testimages: %v", fuzzImagesErr)
	}
	return fuzzImages
}

// fuzzLayouts are the hand-built layouts among the fuzz images.
func fuzzLayouts() []tlayout {
	return []tlayout{
		{name: "esxi7", ver: 6, sbc: "pb2", fdc: "noncontig"},
		{name: "fdc via SB", ver: 6, fdc: "sbpb", sbc: "pb2", rootSB: true},
		{name: "everything via PB2", ver: 6, pbc: "pb2", fbb: "pb2", sbc: "pb2", fdc: "pb2"},
		{name: "vmfs5 fdc via PB", ver: 5, fdc: "pb", pbc: "pb2", sbc: "pb2", rootSB: true},
	}
}

// patchedDev is a device with patch written over it at off.
type patchedDev struct {
	r     io.ReaderAt
	off   int64
	patch []byte
}

func (d *patchedDev) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.r.ReadAt(p, off)
	if lo, hi := max(off, d.off), min(off+int64(n), d.off+int64(len(d.patch))); lo < hi {
		copy(p[lo-off:hi-off], d.patch[lo-d.off:hi-d.off])
	}
	return n, err
}

// openPatched opens image im with patch at device dev, offset off.
func openPatched(im *fuzzImage, dev int, off int64, patch []byte) (*Volume, error) {
	var devs []Device
	for i, f := range im.devs {
		d := Device{Name: fmt.Sprintf("dev%d", i), R: f, Size: im.size[i]}
		if i == dev {
			d.R = &patchedDev{r: f, off: off, patch: patch}
		}
		devs = append(devs, d)
	}
	return Open(devs...)
}

// devOffset maps a logical offset of v to (device index, device offset).
func devOffset(v *Volume, im *fuzzImage, log int64) (int, int64, bool) {
	for _, s := range v.lv.segs {
		if log >= s.lOff && log < s.lOff+s.len && s.dev != nil {
			for i := range im.devs {
				if s.dev.Name == fmt.Sprintf("dev%d", i) {
					return i, s.pOff + log - s.lOff, true
				}
			}
		}
	}
	return 0, 0, false
}

// seedVolume adds, for every structure of image i, its pristine bytes at
// its own position.
func seedVolume(f *testing.F, ims []*fuzzImage) {
	for i, im := range ims {
		v, err := openPatched(im, 0, 0, nil)
		if err != nil {
			f.Fatalf("image %d: %v", i, err)
		}
		add := func(dev int, off int64, n int) {
			b := make([]byte, n)
			if _, err := im.devs[dev].ReadAt(b, off); err != nil && err != io.EOF {
				f.Fatal(err)
			}
			f.Add(uint8(i), uint8(dev), uint64(off), b)
		}
		addLog := func(log int64, n int) {
			if dev, off, ok := devOffset(v, im, log); ok {
				add(dev, off, n)
			}
		}
		// LVM header, volume descriptor and PE table of every device.
		for dev := range im.devs {
			add(dev, lvmHeaderOffset, 0x200)
			add(dev, lvmHeaderOffset+0x200, 0x200)
			add(dev, lvmHeaderOffset+0x1000, 0x200)
			h := int64(0x200)
			if v.ver == 6 {
				h = v.md
			}
			bm := lvmHeaderOffset + h + peMapRel
			add(dev, bm, 0x200)
			add(dev, bm+max(0x400, boolInt(v.ver == 6)*h), 0x200)
		}
		addLog(fsDescriptorOff, 0x200)
		// Resource headers, and the FDs of everything on the volume.
		for _, rf := range []*resFile{v.fdc, v.rfs[kSBC].rf, v.rfs[kPBC].rf, v.rfs[kPB2].rf} {
			if rf == nil {
				continue
			}
			if loc, err := rf.ino.contig(0, 512, 1); err == nil {
				addLog(loc, 0x200)
			}
		}
		v.Walk(".", func(p string, info FileInfo, err error) error {
			if err != nil {
				f.Fatalf("image %d: %v", i, err)
			}
			off, err := v.fdc.offset(fdClusterRes(info.FD))
			if err != nil {
				return nil
			}
			if loc, err := v.fdc.ino.contig(off, int64(v.lay.size), 1); err == nil {
				addLog(loc, v.lay.size)
			}
			// The first block of directories and small files.
			if info.Type == TypeDir || info.ZLA == zlaSB {
				if fl, err := v.Open(p); err == nil {
					if loc, err := fl.ino.contig(0, 512, 1); err == nil {
						addLog(loc, 0x200)
					}
				}
			}
			return nil
		})
		v.Close()
	}
}

// FuzzVolume opens a generated volume with fuzz bytes over one of its
// devices and walks it: every file is stat'ed, listed, mapped and sampled.
func FuzzVolume(f *testing.F) {
	ims := loadFuzzImages(f)
	seedVolume(f, ims)
	f.Fuzz(func(t *testing.T, img, dev uint8, off uint64, patch []byte) {
		if len(patch) > 64<<10 {
			return
		}
		im := ims[int(img)%len(ims)]
		d := int(dev) % len(im.devs)
		v, err := openPatched(im, d, int64(off%uint64(im.size[d])), patch)
		if err != nil {
			checkErr(t, err)
			return
		}
		defer v.Close()
		n := 0
		v.Walk(".", func(p string, info FileInfo, err error) error {
			if n++; n > 500 {
				return fs.SkipAll
			}
			if err != nil {
				checkErr(t, err)
				return nil
			}
			if info.Type == TypeRegular || info.Type == TypeSymlink || info.Type == TypeSystem {
				fl, err := v.Open(p)
				if err != nil {
					checkErr(t, err)
					return nil
				}
				walkFile(fl)
			}
			return nil
		})
	})
}

// checkErr: every error of the package is an *Error with a sentinel (or
// an I/O error of the device).
func checkErr(t *testing.T, err error) {
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T is not a *vmfs.Error: %v", err, err)
	}
}

// FuzzResourceHeader checks the resource header and resource addressing
// (§6.1): whatever the header says, a resource offset that is accepted
// lies inside the resource file.
func FuzzResourceHeader(f *testing.F) {
	ims := loadFuzzImages(f)
	for _, im := range ims[:2] {
		v, err := openPatched(im, 0, 0, nil)
		if err != nil {
			f.Fatal(err)
		}
		for _, rf := range []*resFile{v.fdc, v.rfs[kSBC].rf, v.rfs[kPBC].rf, v.rfs[kPB2].rf} {
			if rf == nil {
				continue
			}
			b := make([]byte, resHeaderLen)
			if err := rf.ino.fill(b, 0, 1, true); err != nil {
				f.Fatal(err)
			}
			f.Add(b, rf.ino.size(), rf.hdr, uint64(1), uint64(3))
			f.Add(b, rf.ino.size(), rf.hdr, uint64(1<<40), uint64(0))
		}
		v.Close()
	}
	f.Fuzz(func(t *testing.T, b []byte, size, hdr int64, cluster, res uint64) {
		h, err := parseResHeader(b)
		if err != nil {
			return
		}
		if size < 0 || hdr < 0 || hdr > 1<<20 {
			return
		}
		ino := &inode{addr: 0x800004, fd: &fdesc{size: uint64(size)}}
		rf := &resFile{name: ".fuzz.sf", ino: ino, h: h, hdr: hdr}
		if rf.check(512) != nil {
			return
		}
		off, err := rf.offset(cluster, res)
		if err != nil {
			checkErr(t, err)
			return
		}
		if off < 0 || off > size-int64(h.resSize) {
			t.Fatalf("offset(%d, %d) = %d outside the %d-byte file (header %+v)", cluster, res, off, size, h)
		}
	})
}
