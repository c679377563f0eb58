package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// countFS counts ReadAt calls per file.
type countFS struct {
	FS
	mu sync.Mutex
	n  map[string]*atomic.Int64
}

type countFile struct {
	File
	n *atomic.Int64
}

func (c *countFile) ReadAt(p []byte, off int64) (int, error) {
	c.n.Add(1)
	return c.File.ReadAt(p, off)
}

func (c *countFS) Open(name string) (File, error) {
	f, err := c.FS.Open(name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[name] == nil {
		c.n[name] = new(atomic.Int64)
	}
	return &countFile{f, c.n[name]}, nil
}

func (c *countFS) reset() {
	for _, v := range c.n {
		v.Store(0)
	}
}

func (c *countFS) get(suffix string) int64 {
	var n int64
	for k, v := range c.n {
		if strings.HasSuffix(k, suffix) {
			n += v.Load()
		}
	}
	return n
}

// TestReadContiguous: a run stored contiguously by one layer costs one
// ReadAt of that layer's file; gapped grains cost one each.
func TestReadContiguous(t *testing.T) {
	dir := t.TempDir()
	names := vmfsChain(t, dir)
	cfs := &countFS{FS: DirFS(dir), n: map[string]*atomic.Int64{}}
	d, err := Open(cfs, names[3], Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p1, _ := d.View(2) // base + COWD 1
	buf := make([]byte, 200*512)
	p1.ReadAt(buf, 100*512) // warm the grain tables
	cfs.reset()
	p1.ReadAt(buf, 100*512)
	if n, b := cfs.get("-000001-delta.vmdk"), cfs.get("-flat.vmdk"); n != 1 || b != 0 {
		t.Errorf("200 contiguous COWD grains: %d delta reads, %d base reads; want 1 and 0", n, b)
	}
	// Base only (a hole in every delta): one read.
	buf = make([]byte, 512<<10)
	d.ReadAt(buf, 3<<20+256<<10) // warm
	cfs.reset()
	d.ReadAt(buf, 3<<20+256<<10)
	if n := cfs.get("-flat.vmdk"); n != 1 {
		t.Errorf("512 KiB of base under holes: %d reads, want 1", n)
	}
	// Gapped grains of the top COWD: one read each (14), plus the runs
	// between them from lower layers.
	buf = make([]byte, 14*512)
	d.ReadAt(buf, 150*512)
	cfs.reset()
	d.ReadAt(buf, 150*512)
	if n := cfs.get("-000003-delta.vmdk"); n != 14 {
		t.Errorf("14 gapped grains: %d reads", n)
	}
}

// TestIOTestReader runs testing/iotest over a window of the chain with
// every layer in it, and concurrent ReadAt against a sequential read.
func TestIOTestReader(t *testing.T) {
	dir := t.TempDir()
	names := vmfsChain(t, dir)
	d := openT(t, dir, names[3], Options{})
	want := make([]byte, 1<<20)
	if _, err := d.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := iotest.TestReader(io.NewSectionReader(d, 0, 1<<20), want); err != nil {
		t.Fatal(err)
	}
	// The tail: ReadAt past the end returns io.EOF with the bytes before it.
	tail := make([]byte, 4096)
	n, err := d.ReadAt(tail, d.Size()-1000)
	if n != 1000 || err != io.EOF {
		t.Errorf("tail read %d, %v", n, err)
	}
	if _, err := d.ReadAt(tail, -1); err == nil {
		t.Error("negative offset accepted")
	}

	full := make([]byte, d.Size())
	if _, err := d.ReadAt(full, 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			buf := make([]byte, 300<<10)
			for range 200 {
				off := r.Int64N(d.Size())
				n := r.Int64N(int64(len(buf))) + 1
				n = min(n, d.Size()-off)
				if _, err := d.ReadAt(buf[:n], off); err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], full[off:off+n]) {
					errs <- fmt.Errorf("concurrent read at %d+%d differs", off, n)
					return
				}
				if _, err := d.Extent(off); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestNotConvertible(t *testing.T) {
	for _, c := range []struct{ name, desc string }{
		{"RDM", "createType=\"vmfsRawDeviceMap\"\nRW 2048 VMFSRDM \"x-rdm.vmdk\"\n"},
		{"RDMP", "createType=\"vmfsPassthroughRawDeviceMap\"\nRW 2048 VMFSRDM \"x-rdmp.vmdk\"\n"},
		{"VMFSRAW extent", "createType=\"vmfs\"\nRW 2048 VMFSRAW \"/dev/disks/naa.1\"\n"},
		{"NOACCESS", "createType=\"vmfs\"\nNOACCESS 2048 VMFS \"x-flat.vmdk\"\n"},
		{"fullDevice", "createType=\"fullDevice\"\nRW 2048 FLAT \"/dev/sda\" 0\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Open(memFS{"x.vmdk": []byte(c.desc), "x-flat.vmdk": make([]byte, 1<<20)}, "x.vmdk", Options{})
			if !errors.Is(err, ErrNotConvertible) {
				t.Fatalf("err %v", err)
			}
		})
	}
}

// TestCorrupt: damaged metadata is refused with an error naming the
// structure and offset.
func TestCorrupt(t *testing.T) {
	capSec := int64(8 << 20 / 512)
	cowd := encodeCOWD(capSec, map[int64][]byte{5: randBytes(1, 512)}, false)
	se := encodeSESparse(capSec, map[int64]grainSpec{3: {kind: formats.Data, b: randBytes(2, 4096)}}, 0)
	mut := func(b []byte, f func([]byte)) []byte { c := bytes.Clone(b); f(c); return c }
	cases := []struct {
		name     string
		file     []byte
		ext      string
		sentinel error
		want     string
	}{
		{"COWD GD entry past EOF", mut(cowd, func(b []byte) { binary.LittleEndian.PutUint32(b[4*512:], 1<<30) }), "VMFSSPARSE", ErrCorrupt, "offset 0x800"},
		{"COWD numGDEntries short", mut(cowd, func(b []byte) { binary.LittleEndian.PutUint32(b[24:], 1) }), "VMFSSPARSE", ErrCorrupt, "numGDEntries"},
		{"COWD version", mut(cowd, func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 2) }), "VMFSSPARSE", ErrUnsupported, "version"},
		{"seSparse dirty", mut(se, func(b []byte) { binary.LittleEndian.PutUint64(b[512+24:], 1) }), "SESPARSE", ErrDirty, "replay"},
		{"seSparse GD top bits", mut(se, func(b []byte) { binary.LittleEndian.PutUint64(b[8*512:], 0x2000000000000000) }), "SESPARSE", ErrCorrupt, "offset 0x1000"},
		{"seSparse grain size", mut(se, func(b []byte) { binary.LittleEndian.PutUint64(b[24:], 16) }), "SESPARSE", ErrUnsupported, "grain size"},
		{"seSparse GT entry type", mut(se, func(b []byte) {
			binary.LittleEndian.PutUint64(b[(8+1)*512+3*8:], 0x5000000000000000)
		}), "SESPARSE", ErrCorrupt, "unknown type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := memFS{
				"d.vmdk":   []byte(fmt.Sprintf("createType=\"x\"\nRW %d %s \"d-x.vmdk\"\n", capSec, c.ext)),
				"d-x.vmdk": c.file,
			}
			d, err := Open(fsys, "d.vmdk", Options{})
			if err == nil {
				// Table entries are checked when read.
				_, err = formats.Extents(d)
				d.Close()
			}
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "d-x.vmdk") {
				t.Fatalf("err %v", err)
			}
			t.Log(err)
		})
	}
}

// TestParentResolution: Windows hints, /vmfs/volumes hints through
// Options.Volumes, and extent names that try to leave the datastore.
func TestParentResolution(t *testing.T) {
	capSec := int64(1 << 20 / 512)
	base := func(cid uint32) []byte {
		return []byte(descText(cid, NoParentCID, "vmfs", "", []string{fmt.Sprintf(`RW %d VMFS "base-flat.vmdk"`, capSec)}))
	}
	flat := randBytes(9, 1<<20)
	delta := encodeCOWD(capSec, map[int64][]byte{0: randBytes(10, 512)}, false)
	child := func(hint string) []byte {
		return []byte(descText(2, 1, "vmfsSparse", hint, []string{fmt.Sprintf(`RW %d VMFSSPARSE "c-delta.vmdk"`, capSec)}))
	}
	other := memFS{"vm/base.vmdk": base(1), "vm/base-flat.vmdk": flat}
	for _, c := range []struct {
		name, hint string
		fsys       memFS
		parent     string
	}{
		{"relative", "base.vmdk", memFS{"vm/base.vmdk": base(1), "vm/base-flat.vmdk": flat}, "vm/base.vmdk"},
		{"relative dir", "../old/base.vmdk", memFS{"old/base.vmdk": base(1), "old/base-flat.vmdk": flat}, "old/base.vmdk"},
		{"windows basename", `C:\VMs\vm\base.vmdk`, memFS{"vm/base.vmdk": base(1), "vm/base-flat.vmdk": flat}, "vm/base.vmdk"},
		{"windows sibling dir", `D:\VMs\gold\base.vmdk`, memFS{"gold/base.vmdk": base(1), "gold/base-flat.vmdk": flat}, "gold/base.vmdk"},
		{"vmfs volumes same FS", "/vmfs/volumes/datastore1/tmpl/base.vmdk", memFS{"tmpl/base.vmdk": base(1), "tmpl/base-flat.vmdk": flat}, "tmpl/base.vmdk"},
		{"vmfs volumes mapped", "/vmfs/volumes/5f1e-uuid/vm/base.vmdk", memFS{}, "vm/base.vmdk"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.fsys["vm/c.vmdk"] = child(c.hint)
			c.fsys["vm/c-delta.vmdk"] = delta
			d, err := Open(c.fsys, "vm/c.vmdk", Options{Volumes: map[string]FS{"5f1e-uuid": other}})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if ch := d.Chain(); len(ch) != 2 || ch[1] != c.parent {
				t.Fatalf("chain %q", ch)
			}
			got := make([]byte, 1024)
			d.ReadAt(got, 0)
			if !bytes.Equal(got[512:], flat[512:1024]) {
				t.Error("parent data not read")
			}
			if c.name == "vmfs volumes mapped" && d.Layers()[1].Volume != "5f1e-uuid" {
				t.Errorf("volume %q", d.Layers()[1].Volume)
			}
		})
	}
	_, err := Open(memFS{"vm/x.vmdk": []byte("RW 8 FLAT \"../../etc/passwd\" 0\n")}, "vm/x.vmdk", Options{})
	if err == nil || !strings.Contains(err.Error(), "leaves the datastore") {
		t.Errorf("escaping extent: %v", err)
	}
}

// TestHugeSparse: a 2 TiB seSparse delta over nothing costs no RAM or disk:
// its extent walk and a read at the end work.
func TestHugeSparse(t *testing.T) {
	capSec := int64(2 << 40 / 512)
	last := capSec/8 - 1
	se := encodeSESparse(capSec, map[int64]grainSpec{last: {kind: formats.Data, b: randBytes(3, 4096)}}, 0)
	fsys := memFS{"h.vmdk": []byte(descText(1, NoParentCID, "seSparse", "", []string{fmt.Sprintf(`RW %d SESPARSE "h-sesparse.vmdk"`, capSec)})), "h-sesparse.vmdk": se}
	d, err := Open(fsys, "h.vmdk", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ext, err := formats.Extents(d)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([]formats.Extent{{Off: 0, Len: d.Size() - 4096, Kind: formats.Hole}, {Off: d.Size() - 4096, Len: 4096, Kind: formats.Data}})
	if fmt.Sprint(ext) != want {
		t.Errorf("extents %v", ext)
	}
	b := make([]byte, 4096)
	d.ReadAt(b, d.Size()-4096)
	if !bytes.Equal(b, randBytes(3, 4096)) {
		t.Error("last grain differs")
	}
}
