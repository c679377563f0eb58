package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

// flakyDevice fails every read that touches one of its bad ranges, like a
// disk with bad sectors, and records the reads it serves.
type flakyDevice struct {
	r     io.ReaderAt
	bad   [][2]int64 // [off, end)
	mu    sync.Mutex
	reads [][2]int64
}

func (d *flakyDevice) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	for _, b := range d.bad {
		if off < b[1] && end > b[0] {
			return 0, errors.New("input/output error (injected)")
		}
	}
	d.mu.Lock()
	d.reads = append(d.reads, [2]int64{off, end})
	d.mu.Unlock()
	return d.r.ReadAt(p, off)
}

// runWithDevices runs the CLI with the volume's files opened through dev.
func runWithDevices(t *testing.T, dev *flakyDevice, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	app := newApp(&out, &errb)
	app.Metadata = map[string]any{deviceOpenerKey: deviceOpener(func(paths []string) ([]vmfs.Device, error) {
		f, err := os.Open(paths[0])
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { f.Close() })
		st, _ := f.Stat()
		dev.r = f
		return []vmfs.Device{{Name: paths[0], R: dev, Size: st.Size()}}, nil
	})}
	err := app.RunContext(context.Background(), append([]string{"vmfs2vhd"}, args...))
	code := exitOK
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case err != nil:
		code = exitFailure
	}
	if err != nil {
		errb.WriteString(err.Error())
	}
	return code, out.String(), errb.String()
}

// --rescue recovers every readable sector of a disk on a device with bad
// sectors and reports exactly the unreadable ranges.
func TestRescueBadSectors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "v.img")
	m, err := testimages.Build(testimages.IssueSpec(5), img)
	if err != nil {
		t.Fatal(err)
	}
	disk := "vm3/vm3.vmdk" // eager: every block is data
	good := filepath.Join(dir, "good.raw")
	rec := &flakyDevice{}
	if code, _, stderr := runWithDevices(t, rec, "convert", "-q", img, disk, good); code != 0 {
		t.Fatalf("clean conversion: %s", stderr)
	}
	if sha256File(t, good) != manifestDisk(m, disk).SHA256 {
		t.Fatal("clean conversion differs from the manifest")
	}
	// The largest device read is the disk's data; put bad sectors inside it.
	sort.Slice(rec.reads, func(i, j int) bool { return rec.reads[i][1]-rec.reads[i][0] > rec.reads[j][1]-rec.reads[j][0] })
	p := rec.reads[0][0]
	if rec.reads[0][1]-p < 2<<20 {
		t.Fatalf("largest read is only %d bytes", rec.reads[0][1]-p)
	}
	flaky := &flakyDevice{bad: [][2]int64{{p + 512<<10 + 700, p + 512<<10 + 1700}, {p + 3<<19, p + 3<<19 + 64<<10}}}
	out := filepath.Join(dir, "rescued.raw")
	list := filepath.Join(dir, "bad.txt")
	code, stdout, stderr := runWithDevices(t, flaky, "convert", "-q", "--rescue", "--json", "--bad-ranges", list, img, disk, out)
	if code != exitBadRange {
		t.Fatalf("exit %d, want %d: %s", code, exitBadRange, stderr)
	}
	var res result
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, r := range res.BadRanges {
		total += r.Len
	}
	// 1000 bytes at +700 touch 3 sectors; 64 KiB aligned is 128 sectors.
	if want := int64(3*512 + 64<<10); total != want {
		t.Errorf("bad ranges %v total %d bytes, want %d", res.BadRanges, total, want)
	}
	// Everything else is recovered; the bad ranges are zeros.
	a, _ := os.ReadFile(good)
	b, _ := os.ReadFile(out)
	if len(a) != len(b) {
		t.Fatalf("sizes %d and %d", len(a), len(b))
	}
	for _, r := range res.BadRanges {
		clear(a[r.Off : r.Off+r.Len])
	}
	if !bytes.Equal(a, b) {
		t.Error("the rescued output differs from the clean one outside the reported ranges")
	}
	text, _ := os.ReadFile(list)
	if lines := strings.Count(string(text), "\n"); lines != len(res.BadRanges)+1 {
		t.Errorf("--bad-ranges file has %d lines for %d ranges:\n%s", lines, len(res.BadRanges), text)
	}
	// Without --rescue the same device fails the conversion and leaves nothing.
	code, _, stderr = runWithDevices(t, flaky, "convert", "-q", img, disk, filepath.Join(dir, "fail.raw"))
	if code != exitFailure || !strings.Contains(stderr, "injected") {
		t.Errorf("without --rescue: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "fail.raw")); err == nil {
		t.Error("a failed conversion left its output")
	}
	// cat --rescue too.
	code, catOut, _ := runWithDevices(t, flaky, "cat", "--rescue", img, "vm3/vm3-flat.vmdk")
	if code != exitBadRange || catOut != string(b) {
		t.Errorf("cat --rescue: exit %d, output equal to convert's: %v", code, catOut == string(b))
	}
}
