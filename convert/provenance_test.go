package convert

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func testRecord() *Record {
	t0 := time.Date(2026, 12, 5, 20, 50, 0, 0, time.UTC)
	return &Record{
		ToolVersion: "v0.9.0",
		State:       StateComplete,
		Created:     t0,
		Updated:     t0.Add(time.Minute),
		Source: Source{
			VolumeUUID: "5f1e2d3c-aabbccdd-0011-223344556677",
			Disk:       "vm1/vm1.vmdk",
			Chain: []Layer{
				{File: "vm1/vm1.vmdk", CID: 0xfffffffe, ParentCID: 0xffffffff, Size: 4 << 30},
				{File: "vm1/vm1-000001.vmdk", CID: 0x1a2b3c4d, ParentCID: 0xfffffffe, Size: 16 << 20},
			},
		},
		Output: RecordOutput{
			Format:      "qcow2",
			Options:     map[string]string{"compat": "1.1"},
			VirtualSize: 4 << 30,
			Fingerprint: Fingerprint{Size: 123456, ModTime: t0.Add(2 * time.Minute), Metadata: strings.Repeat("ab", 32)},
		},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := SidecarPath(filepath.Join(dir, "disk.qcow2"))
	if filepath.Base(path) != "disk.qcow2.vmfs2vhd.json" {
		t.Fatalf("sidecar %s", path)
	}
	r := testRecord()
	if err := SaveRecord(path, r); err != nil {
		t.Fatal(err)
	}
	got, err := LoadRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Schema != RecordSchema || got.Tool != "vmfs2vhd" {
		t.Fatalf("schema %d tool %q", got.Schema, got.Tool)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
	}
	b, _ := os.ReadFile(path)
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	chain := raw["source"].(map[string]any)["chain"].([]any)
	if cid := chain[0].(map[string]any)["cid"]; cid != "fffffffe" {
		t.Fatalf("cid written as %v, want \"fffffffe\"", cid)
	}

	// Save replaces atomically and leaves no temporary file.
	r.State = StateUpdateInProgress
	r.UpdateTarget = r.Source.Chain
	if err := SaveRecord(path, r); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadRecord(path); err != nil || got.State != StateUpdateInProgress {
		t.Fatalf("after replace: %v, %v", got, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want the record only", len(ents))
	}
	// A failed save (unwritable target: a directory) leaves the old
	// record intact and no temporary file.
	bad := filepath.Join(dir, "sub")
	os.Mkdir(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "x"), nil, 0o644)
	if err := SaveRecord(bad, r); err == nil {
		t.Fatal("saving over a non-empty directory succeeded")
	}
	ents, _ = os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("a failed save left %d entries", len(ents))
	}

	// Malformed records.
	for name, body := range map[string]string{
		"schema": `{"schema": 2, "state": "complete"}`,
		"state":  `{"schema": 1, "state": "half"}`,
		"cid":    `{"schema": 1, "state": "complete", "source": {"chain": [{"cid": "xyz"}]}}`,
	} {
		p := filepath.Join(dir, name+".json")
		os.WriteFile(p, []byte(body), 0o644)
		if _, err := LoadRecord(p); err == nil {
			t.Errorf("%s: a malformed record loaded", name)
		}
	}
}

func TestCheckUpdate(t *testing.T) {
	rec := testRecord()
	fp := rec.Output.Fingerprint
	const vol, disk = "5f1e2d3c-aabbccdd-0011-223344556677", "vm1/vm1.vmdk"
	leaf := Layer{File: "vm1/vm1-000002.vmdk", CID: 0x55667788, ParentCID: 0x1a2b3c4d, Size: 8 << 20}
	newChain := append(append([]Layer(nil), rec.Source.Chain...), leaf)

	layers, err := CheckUpdate(rec, vol, disk, newChain, "qcow2", fp)
	if err != nil || len(layers) != 1 || layers[0] != leaf {
		t.Fatalf("valid update: %v, %v", layers, err)
	}
	if layers, err := CheckUpdate(rec, vol, disk, rec.Source.Chain, "qcow2", fp); err != nil || len(layers) != 0 {
		t.Fatalf("same point: %v, %v", layers, err)
	}

	edit := func(f func(c []Layer) []Layer) []Layer {
		c := append([]Layer(nil), newChain...)
		return f(c)
	}
	other := fp
	other.Metadata = strings.Repeat("cd", 32)
	later := fp
	later.ModTime = later.ModTime.Add(time.Second)
	bigger := fp
	bigger.Size++
	inProgress := testRecord()
	inProgress.State = StateUpdateInProgress
	inProgress.UpdateTarget = newChain
	sibling := Layer{File: "vm1/vm1-000003.vmdk", CID: 0x99, ParentCID: 0x1a2b3c4d, Size: 1 << 20}

	for _, tc := range []struct {
		name   string
		rec    *Record
		vol    string
		chain  []Layer
		format string
		fp     Fingerprint
		want   RefusalReason
		layer  int
	}{
		{"no record", nil, vol, newChain, "qcow2", fp, RefuseNoRecord, -1},
		{"metadata changed", rec, vol, newChain, "qcow2", other, RefuseOutputChanged, -1},
		{"mtime changed", rec, vol, newChain, "qcow2", later, RefuseOutputChanged, -1},
		{"size changed", rec, vol, newChain, "qcow2", bigger, RefuseOutputChanged, -1},
		{"other format", rec, vol, newChain, "vhdx", fp, RefuseOutputChanged, -1},
		{"other volume", rec, "other", newChain, "qcow2", fp, RefuseOtherSource, -1},
		{"base replaced", rec, vol, edit(func(c []Layer) []Layer { c[0].File = "vm1/vm1-flat.vmdk"; return c }), "qcow2", fp, RefuseChainRewritten, 0},
		{"layer written to", rec, vol, edit(func(c []Layer) []Layer { c[1].Size += 512; return c }), "qcow2", fp, RefuseChainRewritten, 1},
		{"consolidated", rec, vol, edit(func(c []Layer) []Layer { return append(c[:1], c[2:]...) }), "qcow2", fp, RefuseChainRewritten, 1},
		{"CID changed", rec, vol, edit(func(c []Layer) []Layer { c[1].CID = 0x1a2b3c4e; return c }), "qcow2", fp, RefuseCIDMismatch, 1},
		{"child of another", rec, vol, edit(func(c []Layer) []Layer { c[2].ParentCID = 0x12345678; return c }), "qcow2", fp, RefuseCIDMismatch, 2},
		{"reverted", rec, vol, newChain[:1], "qcow2", fp, RefuseNotAncestor, 1},
		{"interrupted elsewhere", inProgress, vol, edit(func(c []Layer) []Layer { c[2] = sibling; return c }), "qcow2", other, RefuseNotAncestor, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := disk
			_, err := CheckUpdate(tc.rec, tc.vol, disk, tc.chain, tc.format, tc.fp)
			var re *RefusalError
			if !errors.As(err, &re) || !errors.Is(err, ErrUpdateRefused) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			if re.Reason != tc.want || re.Layer != tc.layer {
				t.Fatalf("refusal %q at layer %d (%v), want %q at %d", re.Reason, re.Layer, err, tc.want, tc.layer)
			}
		})
	}

	// An interrupted update may be finished (or carried further) even
	// though it changed the output.
	if _, err := CheckUpdate(inProgress, vol, disk, newChain, "qcow2", other); err != nil {
		t.Fatalf("resuming an interrupted update: %v", err)
	}

	// LoadRecord of a missing sidecar is the no-record refusal.
	_, err = LoadRecord(filepath.Join(t.TempDir(), "none.vmfs2vhd.json"))
	var re *RefusalError
	if !errors.As(err, &re) || re.Reason != RefuseNoRecord {
		t.Fatalf("missing record: %v", err)
	}
}
