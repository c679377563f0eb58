package vmdk

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

var update = flag.Bool("update", false, "rewrite the fuzz seeds in testdata/")

// TestWriteSeeds rewrites testdata/ (with -update): small COWD and seSparse
// files from the test encoders, hosted sparse and streamOptimized files from
// qemu-img, and descriptors. See testdata/README.md.
func TestWriteSeeds(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite testdata/")
	}
	capSec := int64(8192)
	writeFile(t, "testdata/cowd-small.bin", encodeCOWD(capSec, map[int64][]byte{
		3: randBytes(1, 512), 4: randBytes(2, 512), 5000: randBytes(3, 512)}, false))
	writeFile(t, "testdata/sesparse-small.bin", encodeSESparse(2048, map[int64]grainSpec{
		0: {kind: formats.Zero}, 1: {kind: formats.Zero, unmapped: true},
		2: {kind: formats.Data, b: randBytes(4, 4096)}, 3: {kind: formats.Data, b: randBytes(5, 4096)}}, 0))
	writeFile(t, "testdata/desc-vmfs.txt", []byte(descText(0xfffffffe, NoParentCID, "vmfs", "",
		[]string{`RW 2048 VMFS "ünï cödé-flat.vmdk"`}, `ddb.thinProvisioned = "1"`)))
	writeFile(t, "testdata/desc-split.txt", []byte(descText(1, NoParentCID, "vmfs", "",
		[]string{`RW 2048 FLAT "a-flat.vmdk" 0`, `RW 1024 ZERO`, `RDONLY 2048 FLAT "b-flat.vmdk" 1024 uuid dev`})))
	writeFile(t, "testdata/desc-cowd-crlf.txt", []byte(toCRLF(descText(2, 1, "vmfsSparse",
		"/vmfs/volumes/datastore1/vm/base.vmdk", []string{`RW 8192 VMFSSPARSE "x-delta.vmdk"`}))))
	writeFile(t, "testdata/desc-sesparse.txt", []byte(descText(3, 2, "seSparse", `C:\VMs\vm\base.vmdk`,
		[]string{`RW 2048 SESPARSE "x-sesparse.vmdk"`}, `ddb.grain = "8"`)))
	oracle.Find(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeSparse(t, src, 1<<20, []region{{0, randBytes(6, 4096)}, {8192, randBytes(7, 3000)}})
	for _, sub := range []string{"monolithicSparse", "streamOptimized"} {
		out := filepath.Join(dir, sub+".vmdk")
		oracle.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+sub, src, out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, "testdata/kdmv-"+sub+".vmdk", b)
	}
}

func toCRLF(s string) string {
	out := make([]byte, 0, len(s)+64)
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, '\r')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// addSeeds adds testdata files matching pattern (and extra byte slices).
func addSeeds(f *testing.F, pattern string, extra ...[]byte) {
	files, _ := filepath.Glob(filepath.Join("testdata", pattern))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, b := range extra {
		f.Add(b)
	}
}

// exercise opens data as a lone file and reads some of what it describes:
// it must never panic, and any error must be an *Error.
func exercise(t *testing.T, fsys memFS, name string) {
	d, err := Open(fsys, name, Options{IgnoreCID: true})
	if err != nil {
		return
	}
	defer d.Close()
	// A small window at the start of each run exercises every mapping
	// path; reading whole 64 KiB runs made each input cost ~1 ms, which
	// the fuzzer's minimization of new inputs multiplies (see the
	// Makefile's FUZZMINIMIZETIME).
	buf := make([]byte, 4<<10)
	pos := int64(0)
	for range 8 {
		if pos >= d.Size() {
			break
		}
		e, err := d.Extent(pos)
		if err != nil {
			return
		}
		if e.Len <= 0 || e.Off != pos {
			t.Fatalf("Extent(%d) = %+v", pos, e)
		}
		n := min(e.Len, int64(len(buf)))
		if _, err := d.ReadAt(buf[:n], pos); err != nil && err.Error() != "EOF" {
			return
		}
		if e.Kind != formats.Data && !allZero(buf[:n]) {
			t.Fatalf("%v run at %d reads non-zero", e.Kind, pos)
		}
		pos = e.End()
	}
}

func FuzzDescriptor(f *testing.F) {
	addSeeds(f, "desc-*.txt")
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDescriptor("f.vmdk", data)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T", err)
			}
			return
		}
		_ = d.Size()
		fsys := memFS{"f.vmdk": data}
		for _, x := range d.Extents {
			fsys[x.File] = make([]byte, 64<<10)
		}
		exercise(t, fsys, "f.vmdk")
	})
}

func fuzzFile(f *testing.F, pattern string, extra ...[]byte) {
	addSeeds(f, pattern, extra...)
	f.Fuzz(func(t *testing.T, data []byte) {
		exercise(t, memFS{"x.vmdk": data}, "x.vmdk")
		// The same bytes as the extent of a descriptor.
		for _, typ := range []string{"VMFSSPARSE", "SESPARSE", "SPARSE"} {
			desc := fmt.Sprintf("createType=\"x\"\nRW 8192 %s \"x.bin\"\n", typ)
			exercise(t, memFS{"d.vmdk": []byte(desc), "x.bin": data}, "d.vmdk")
		}
	})
}

// FuzzCOWD covers the COWD header, grain directory and grain tables.
func FuzzCOWD(f *testing.F) { fuzzFile(f, "cowd-*.bin") }

// FuzzSESparse covers the seSparse headers, directory and tables.
func FuzzSESparse(f *testing.F) { fuzzFile(f, "sesparse-*.bin") }

// FuzzKDMV covers the hosted sparse header, embedded descriptor, directory
// and tables, and streamOptimized footer, markers and compressed grains
// (seeded with qemu's and VMware's files).
func FuzzKDMV(f *testing.F) {
	var extra [][]byte
	for _, s := range []string{"iotest-version3.vmdk.bz2", "afl9.vmdk.bz2"} {
		if _, err := os.Stat(filepath.Join(platformDir, s)); err == nil {
			extra = append(extra, bunzip(f, s))
		}
	}
	fuzzFile(f, "kdmv-*.vmdk", extra...)
}
