package vmdk

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

// vmfsChain writes a VMFS-style chain into dir/"vm dir":
//
//	0 base   ünï cödé.vmdk          createType="vmfs", sparse -flat file
//	1 COWD   ünï cödé-000001.vmdk   CRLF descriptor, contiguous and gapped grains, 2 GTs
//	2 seSparse ünï cödé-000002.vmdk zero and unmapped grains over data, rotated indexes
//	3 COWD   ünï cödé-000003.vmdk   absolute /vmfs/volumes hint
//
// and returns the descriptor paths relative to dir, base first. Layer 3 also
// gets a qemu twin (-000003q.vmdk) with a relative hint, since qemu cannot
// follow /vmfs/volumes paths.
const chainCap = 40 << 20 // bytes; 3 seSparse grain tables, 10 COWD tables

func vmfsChain(t *testing.T, dir string) []string {
	const sub = "vm dir"
	const stem = "ünï cödé"
	p := func(s string) string { return filepath.Join(dir, sub, s) }
	capSec := int64(chainCap / 512)

	// base
	writeSparse(t, p(stem+"-flat.vmdk"), chainCap, []region{
		{0, randBytes(10, 64<<10)},          // sectors 0..127
		{3 << 20, randBytes(11, 1<<20)},     // 3..4 MiB
		{20<<20 + 512, randBytes(12, 4096)}, // crosses into a second 4K grain
	})
	writeFile(t, p(stem+".vmdk"), []byte(descText(0x11111111, NoParentCID, "vmfs", "",
		[]string{fmt.Sprintf(`RW %d VMFS "%s-flat.vmdk"`, capSec, stem)}, `ddb.thinProvisioned = "1"`)))

	// 1: COWD, CRLF
	g1 := map[int64][]byte{}
	for s := int64(100); s < 300; s++ { // partly over base data (0..127)
		g1[s] = randBytes(uint64(1000+s), 512)
	}
	for s := int64(3<<20/512 + 10); s < 3<<20/512+20; s++ { // inside base data
		g1[s] = randBytes(uint64(2000+s), 512)
	}
	g1[5000] = randBytes(3000, 512) // second grain table
	g1[capSec-1] = randBytes(3001, 512)
	writeSparseBytes(t, p(stem+"-000001-delta.vmdk"), encodeCOWD(capSec, g1, false))
	d1 := descText(0x22222222, 0x11111111, "vmfsSparse", stem+".vmdk",
		[]string{fmt.Sprintf(`RW %d VMFSSPARSE "%s-000001-delta.vmdk"`, capSec, stem)})
	writeFile(t, p(stem+"-000001.vmdk"), []byte(strings.ReplaceAll(d1, "\n", "\r\n")))

	// 2: seSparse
	g2 := map[int64]grainSpec{
		0:    {kind: formats.Zero},                 // over base data
		20:   {kind: formats.Zero, unmapped: true}, // over COWD data (sectors 160..167)
		30:   {kind: formats.Data, b: randBytes(20, 4096)},
		31:   {kind: formats.Data, b: randBytes(21, 4096)},
		32:   {kind: formats.Data, b: randBytes(22, 4096)},
		800:  {kind: formats.Zero}, // inside base data at 3 MiB+
		801:  {kind: formats.Data, b: randBytes(23, 4096)},
		9000: {kind: formats.Data, b: randBytes(24, 4096)}, // third grain table
		9001: {kind: formats.Zero, unmapped: true},
	}
	writeSparseBytes(t, p(stem+"-000002-sesparse.vmdk"), encodeSESparse(capSec, g2, 5000))
	writeFile(t, p(stem+"-000002.vmdk"), []byte(descText(0x33333333, 0x22222222, "seSparse", stem+"-000001.vmdk",
		[]string{fmt.Sprintf(`RW %d SESPARSE "%s-000002-sesparse.vmdk"`, capSec, stem)}, `ddb.grain = "8"`)))

	// 3: COWD with gapped grains, absolute hint
	g3 := map[int64][]byte{}
	for s := int64(150); s < 164; s++ {
		g3[s] = randBytes(uint64(4000+s), 512)
	}
	g3[9000*8+3] = randBytes(4100, 512) // inside a seSparse data grain
	writeSparseBytes(t, p(stem+"-000003-delta.vmdk"), encodeCOWD(capSec, g3, true))
	ext3 := []string{fmt.Sprintf(`RW %d VMFSSPARSE "%s-000003-delta.vmdk"`, capSec, stem)}
	writeFile(t, p(stem+"-000003.vmdk"), []byte(descText(0x44444444, 0x33333333, "vmfsSparse",
		"/vmfs/volumes/5f1e2d3c-aabbccdd-1122-001122334455/"+sub+"/"+stem+"-000002.vmdk", ext3)))
	writeFile(t, p(stem+"-000003q.vmdk"), []byte(descText(0x44444444, 0x33333333, "vmfsSparse", stem+"-000002.vmdk", ext3)))

	var out []string
	for _, s := range []string{".vmdk", "-000001.vmdk", "-000002.vmdk", "-000003.vmdk"} {
		out = append(out, sub+"/"+stem+s)
	}
	return out
}

// TestVMFSChain: every point of a base+COWD+seSparse+COWD chain, built by the
// test encoders, reads exactly as qemu-img reads it (qemu judges encoder and
// reader together), opened directly and as a View of the leaf.
func TestVMFSChain(t *testing.T) {
	oracle.Find(t, "qemu-img")
	dir := t.TempDir()
	names := vmfsChain(t, dir)
	leaf := openT(t, dir, names[3], Options{})
	if got := leaf.Chain(); len(got) != 4 || got[3] != names[0] || got[1] != names[2] {
		t.Fatalf("chain %q", got)
	}
	ls := leaf.Layers()
	if ls[3].Provisioning != "thin" || ls[3].CreateType != "vmfs" || ls[0].CID != 0x44444444 || ls[0].ParentCID != 0x33333333 || ls[1].CreateType != "seSparse" {
		t.Errorf("layers %+v", ls)
	}
	for i, name := range names {
		t.Run(fmt.Sprintf("point%d", i), func(t *testing.T) {
			qname := name
			if i == 3 {
				qname = strings.TrimSuffix(name, ".vmdk") + "q.vmdk"
			}
			ref := qemuRaw(t, filepath.Join(dir, qname), "vmdk")
			d := openT(t, dir, name, Options{})
			if d.Depth() != i+1 {
				t.Fatalf("depth %d", d.Depth())
			}
			compareImage(t, d, ref)
			v, err := leaf.View(3 - i)
			if err != nil {
				t.Fatal(err)
			}
			compareImage(t, v, ref)
			// Every layer's data (COWD and seSparse grains, the flat base)
			// is located in its local file.
			for _, n := range []int64{1 << 20, 4096, 1536} {
				synth.CheckLocate(t, v, n, nil)
			}
		})
	}
	// Kinds from metadata.
	for _, c := range []struct {
		off  int64
		kind formats.Kind
		len  int64
	}{
		{0, formats.Zero, 4096},              // seSparse zero grain over base data
		{4096, formats.Data, 100*512 - 4096}, // base data
		{100 * 512, formats.Data, 0},         // COWD over base data
		{160 * 512, formats.Data, 4 * 512},   // top COWD (150..163) over the unmapped seSparse grain (160..167)
		{164 * 512, formats.Zero, 4 * 512},   // rest of the unmapped grain shadows COWD data
		{168 * 512, formats.Data, 0},         // COWD 1 again
		{5 << 20, formats.Hole, 0},           // nothing anywhere
		{800 * 4096, formats.Zero, 4096},     // seSparse zero over base data
		{9001 * 4096, formats.Zero, 4096},    // unmapped over a hole
	} {
		e, err := leaf.Extent(c.off)
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != c.kind || (c.len > 0 && e.Len != c.len) {
			t.Errorf("Extent(%d) = %+v, want kind %v len %d", c.off, e, c.kind, c.len)
		}
	}
}

// TestVMFSChainErrors: CID mismatch (and IgnoreCID), a loop, a missing
// parent; qemu agrees the mismatched chain is unreadable.
func TestVMFSChainErrors(t *testing.T) {
	dir := t.TempDir()
	names := vmfsChain(t, dir)
	sub := filepath.Join(dir, "vm dir")
	stem := "ünï cödé"
	capSec := int64(chainCap / 512)
	ext1 := []string{fmt.Sprintf(`RW %d VMFSSPARSE "%s-000001-delta.vmdk"`, capSec, stem)}

	t.Run("CIDMismatch", func(t *testing.T) {
		writeFile(t, filepath.Join(sub, "bad-cid.vmdk"), []byte(descText(0x22222222, 0xdeadbeef, "vmfsSparse", stem+".vmdk", ext1)))
		_, err := Open(DirFS(dir), "vm dir/bad-cid.vmdk", Options{})
		if !errors.Is(err, ErrCIDMismatch) {
			t.Fatalf("err %v", err)
		}
		for _, want := range []string{"bad-cid.vmdk", "deadbeef", "11111111", stem + ".vmdk"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		d := openT(t, dir, "vm dir/bad-cid.vmdk", Options{IgnoreCID: true})
		good := openT(t, dir, names[1], Options{})
		a, b := make([]byte, 1<<20), make([]byte, 1<<20)
		d.ReadAt(a, 0)
		good.ReadAt(b, 0)
		if !bytes.Equal(a, b) {
			t.Error("IgnoreCID read differs from the consistent chain")
		}
		if p, err := oracleAvailable("qemu-img"); err == nil {
			if _, _, err := oracle.RunErr(t, p, "convert", "-f", "vmdk", "-O", "raw", filepath.Join(sub, "bad-cid.vmdk"), filepath.Join(t.TempDir(), "x.raw")); err == nil {
				t.Error("qemu read a chain with a CID mismatch")
			}
		}
	})
	t.Run("Loop", func(t *testing.T) {
		writeFile(t, filepath.Join(sub, "loop-a.vmdk"), []byte(descText(1, 2, "vmfsSparse", "loop-b.vmdk", ext1)))
		writeFile(t, filepath.Join(sub, "loop-b.vmdk"), []byte(descText(2, 1, "vmfsSparse", "loop-a.vmdk", ext1)))
		_, err := Open(DirFS(dir), "vm dir/loop-a.vmdk", Options{IgnoreCID: true})
		if !errors.Is(err, ErrLoop) {
			t.Fatalf("err %v", err)
		}
		t.Log(err)
	})
	t.Run("TooDeep", func(t *testing.T) {
		_, err := Open(DirFS(dir), names[3], Options{MaxDepth: 3})
		if !errors.Is(err, ErrTooDeep) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("MissingParent", func(t *testing.T) {
		writeFile(t, filepath.Join(sub, "orphan.vmdk"), []byte(descText(1, 2, "vmfsSparse", "gone/nothing.vmdk", ext1)))
		_, err := Open(DirFS(dir), "vm dir/orphan.vmdk", Options{})
		if !errors.Is(err, ErrParentNotFound) || !strings.Contains(err.Error(), "gone/nothing.vmdk") {
			t.Fatalf("err %v", err)
		}
		t.Log(err)
	})
}

func oracleAvailable(tool string) (string, error) {
	if p, err := lookPath(tool); err == nil {
		return p, nil
	} else {
		return "", err
	}
}

// TestSplitDescriptor: two FLAT extents (one at a start offset, RDONLY) and
// a ZERO extent. qemu drops ZERO and RDONLY extents, so vmdkinfo judges the
// parse and a hand-computed image judges the data.
func TestSplitDescriptor(t *testing.T) {
	dir := t.TempDir()
	a, b := randBytes(50, 1<<20), randBytes(51, 2<<20)
	writeFile(t, filepath.Join(dir, "a-flat.vmdk"), a)
	writeFile(t, filepath.Join(dir, "b-flat.vmdk"), b)
	desc := descText(0x12345678, NoParentCID, "vmfs", "", []string{
		`RW 2048 FLAT "a-flat.vmdk" 0`,
		`RW 1024 ZERO`,
		`RDONLY 2048 FLAT "b-flat.vmdk" 1024`,
	})
	writeFile(t, filepath.Join(dir, "split.vmdk"), []byte(desc))
	d := openT(t, dir, "split.vmdk", Options{})
	want := append(append(append([]byte{}, a...), make([]byte, 512<<10)...), b[512<<10:512<<10+1<<20]...)
	got := make([]byte, d.Size())
	if n, err := d.ReadAt(got, 0); n != len(got) || (err != nil && err.Error() != "EOF") {
		t.Fatalf("read %d: %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("split read differs at %d", firstDiff(got, want))
	}
	ext, _ := formats.Extents(d)
	wantExt := []formats.Extent{{Off: 0, Len: 1 << 20, Kind: formats.Data}, {Off: 1 << 20, Len: 512 << 10, Kind: formats.Zero}, {Off: 1<<20 + 512<<10, Len: 1 << 20, Kind: formats.Data}}
	if fmt.Sprint(ext) != fmt.Sprint(wantExt) {
		t.Errorf("extents %v, want %v", ext, wantExt)
	}
	oracle.Find(t, "vmdkinfo")
	out := string(oracle.Run(t, "vmdkinfo", filepath.Join(dir, "split.vmdk")))
	if !regexp.MustCompile(`Media size:.*\(2621440 bytes\)`).MatchString(out) || !strings.Contains(out, "Number of extents:\t\t3") {
		t.Fatalf("vmdkinfo:\n%s", out)
	}
	// vmdkinfo's per-extent size, start offset and type agree with our parse.
	re := regexp.MustCompile(`(?s)Extent: (\d)\n(?:\tFilename:\t+(\S+)\n)?\tType:\t+(\w+)\n\tStart offset:\t+(\d+)\n\tSize:.*?\((\d+) bytes\)`)
	ms := re.FindAllStringSubmatch(out, -1)
	if len(ms) != 3 {
		t.Fatalf("vmdkinfo extents not found:\n%s", out)
	}
	lay := d.layers[0]
	for i, m := range ms {
		x := lay.info.Descriptor.Extents[i]
		typ := map[string]string{"FLAT": "Flat", "ZERO": "Zero"}[x.Type]
		if m[2] != x.File || m[3] != typ || m[4] != fmt.Sprint(x.Offset) || m[5] != fmt.Sprint(lay.ends[i]-lay.starts[i]) {
			t.Errorf("extent %d: vmdkinfo %q, ours %+v [%d,%d)", i+1, m[1:], x, lay.starts[i], lay.ends[i])
		}
	}
}
