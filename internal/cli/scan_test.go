package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

// scanFixture: a volume spanned over three devices, a single-device one, a
// file without VMFS.
type scanFixture struct {
	span, one   *testimages.Manifest
	spanF, oneF []string
	junk        string
	spanL, oneL string // labels
}

func buildScanFixture(t *testing.T, tag string) scanFixture {
	t.Helper()
	var f scanFixture
	f.spanL, f.oneL = "span-"+tag, "one-"+tag
	s := smallSpec(6, f.spanL, 701)
	s.Extents = 3
	f.span, f.spanF = buildImages(t, s)
	f.one, f.oneF = buildImages(t, smallSpec(5, f.oneL, 702))
	f.junk = filepath.Join(t.TempDir(), "junk.img")
	if err := os.WriteFile(f.junk, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// checkScanJSON checks scan --json output: the required keys, and both
// volumes with their extents on the given devices, in index order.
func checkScanJSON(t *testing.T, out string, f scanFixture, spanDevs, oneDevs []string) {
	t.Helper()
	var raw []map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, v := range raw {
		for _, k := range []string{"version", "label", "uuid", "capacity", "block_size", "extents", "missing", "live"} {
			if _, ok := v[k]; !ok {
				t.Errorf("volume without %q: %v", k, v)
			}
		}
		for _, e := range v["extents"].([]any) {
			for _, k := range []string{"device", "partition_offset", "index", "count"} {
				if _, ok := e.(map[string]any)[k]; !ok {
					t.Errorf("extent without %q: %v", k, e)
				}
			}
		}
	}
	type ext struct {
		Device          string `json:"device"`
		PartitionOffset int64  `json:"partition_offset"`
		Index, Count    int
	}
	var vols []struct {
		Version   int
		Label     string
		UUID      string
		Capacity  int64
		BlockSize int64 `json:"block_size"`
		Extents   []ext
		Missing   []any
		Live      bool
	}
	json.Unmarshal([]byte(out), &vols)
	if len(vols) != 2 {
		t.Fatalf("%d volumes, want 2: %s", len(vols), out)
	}
	for _, w := range []struct {
		m    *testimages.Manifest
		devs []string
	}{{f.span, spanDevs}, {f.one, oneDevs}} {
		i := slices.IndexFunc(vols, func(v struct {
			Version   int
			Label     string
			UUID      string
			Capacity  int64
			BlockSize int64 `json:"block_size"`
			Extents   []ext
			Missing   []any
			Live      bool
		}) bool {
			return v.UUID == w.m.UUID
		})
		if i < 0 {
			t.Errorf("volume %s (%s) not found", w.m.UUID, w.m.Label)
			continue
		}
		v := vols[i]
		if v.Version != w.m.VMFS || v.Label != w.m.Label || v.Capacity != w.m.Size || v.BlockSize != w.m.BlockSize || len(v.Missing) != 0 || v.Live {
			t.Errorf("%s: %+v", w.m.Label, v)
		}
		var got []string
		for j, e := range v.Extents {
			got = append(got, e.Device)
			if e.Index != j || e.Count != len(w.devs) {
				t.Errorf("%s extent %d: %+v", w.m.Label, j, e)
			}
		}
		if !slices.Equal(got, w.devs) {
			t.Errorf("%s: extents on %v, want %v", w.m.Label, got, w.devs)
		}
	}
}

// scan over image files (any OS), label: and uuid: with -e, and the errors
// of a label that matches nothing or two volumes.
func TestScanCommandImages(t *testing.T) {
	f := buildScanFixture(t, "img")
	args := []string{f.spanF[2], f.junk, f.oneF[0], f.spanF[0], f.spanF[1]}
	code, out, stderr := runCLI(t, append([]string{"scan", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	checkScanJSON(t, out, f, f.spanF, f.oneF)
	if !strings.Contains(stderr, "not VMFS: "+f.junk) {
		t.Errorf("stderr does not name the non-VMFS file: %q", stderr)
	}
	human := mustRun(t, append([]string{"scan"}, args...)...)
	for _, want := range []string{`label "` + f.spanL + `"`, `label "` + f.oneL + `"`, "  2/3 ", f.spanF[2], "3 extents, complete"} {
		if !strings.Contains(human, want) {
			t.Errorf("scan output lacks %q:\n%s", want, human)
		}
	}

	leaf := "vm/vm-000001.vmdk"
	var e []string
	for _, p := range args {
		e = append(e, "-e", p)
	}
	for _, sel := range []string{"label:" + f.spanL, "uuid:" + f.span.UUID} {
		o := filepath.Join(t.TempDir(), "out.raw")
		mustRun(t, append(append([]string{"convert", "-q"}, e...), sel, leaf, o)...)
		if got := fileSHA(t, o); got != manifestSHA(f.span, leaf) {
			t.Errorf("%s: sha256 %s, manifest %s", sel, got, manifestSHA(f.span, leaf))
		}
	}

	code, _, stderr = runCLI(t, append(append([]string{"ls"}, e...), "label:nope")...)
	if code != 1 || !strings.Contains(stderr, "label:nope: no such volume") || !strings.Contains(stderr, "label:"+f.oneL) {
		t.Errorf("unknown label: exit %d: %s", code, stderr)
	}
	// A second volume with the same label.
	twin, twinF := buildImages(t, smallSpec(5, f.oneL, 703))
	e = append(e, "-e", twinF[0])
	code, _, stderr = runCLI(t, append(append([]string{"ls"}, e...), "label:"+f.oneL)...)
	if code != exitUsage || !strings.Contains(stderr, "2 volumes match") || !strings.Contains(stderr, "uuid:"+twin.UUID) ||
		!strings.Contains(stderr, "uuid:"+f.one.UUID) || !strings.Contains(stderr, "name one with uuid:") {
		t.Errorf("ambiguous label: exit %d: %s", code, stderr)
	}
	mustRun(t, append(append([]string{"ls"}, e...), "uuid:"+twin.UUID)...)
	// A spanned volume with an extent missing is named with what is missing.
	code, _, stderr = runCLI(t, "ls", "-e", f.spanF[0], "-e", f.spanF[2], "label:"+f.spanL)
	if code != 1 || !strings.Contains(stderr, "not found: extent 1") {
		t.Errorf("missing extent: exit %d: %s", code, stderr)
	}
}

// scan over loop devices (two datastores, one spanned over three devices,
// and a device without VMFS); label: and uuid: without -e scan every
// attached device and find the spanned volume's extents themselves.
func TestScanCommandLoopDevices(t *testing.T) {
	f := buildScanFixture(t, fmt.Sprintf("loop%d", os.Getpid()))
	spanD := loopAll(t, f.spanF, 512)
	oneD := loopAll(t, f.oneF, 4096)
	junkD := loopAll(t, []string{f.junk}, 512)
	code, out, stderr := runCLI(t, "scan", "--json", spanD[1], junkD[0], oneD[0], spanD[2], spanD[0])
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	checkScanJSON(t, out, f, spanD, oneD)
	if !strings.Contains(stderr, "not VMFS: "+junkD[0]) {
		t.Errorf("stderr does not name the non-VMFS device: %q", stderr)
	}
	// Every attached device: ours are among them.
	all := mustRun(t, "scan")
	for _, want := range []string{f.spanL, f.oneL, spanD[2]} {
		if !strings.Contains(all, want) {
			t.Errorf("scan of every device lacks %q:\n%s", want, all)
		}
	}
	leaf := "vm/vm-000001.vmdk"
	for _, args := range [][]string{{"label:" + f.spanL}, {"--direct", "uuid:" + f.span.UUID}} {
		o := filepath.Join(t.TempDir(), "out.qcow2")
		mustRun(t, append(append([]string{"convert", "-q"}, args...), leaf, o)...)
		if got := contentSHA(t, "qcow2", mustRead(t, o)); got != manifestSHA(f.span, leaf) {
			t.Errorf("%v: content sha256 %s, manifest %s", args, got, manifestSHA(f.span, leaf))
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
