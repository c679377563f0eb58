package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/convert"
	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

// The chain of the update tests: a 32 MiB thin base (40 % data) and three
// snapshots of about 30 % each, in nine runs of about 1 MiB — COWD on
// VMFS5, seSparse on VMFS6 (where run 5 is zeroed and run 8 unmapped
// grains), run 3 stored zeros — each rewriting grains of the ones below. Seeds are explicit, so
// that a second volume built from updSpec with other arguments has the same
// volume UUID and the same CIDs (and, with the same fills, the same files).
var updPoints = []string{"vm1/vm1.vmdk", "vm1/vm1-000001.vmdk", "vm1/vm1-000002.vmdk", "vm1/vm1-000003.vmdk"}

const updSize = 32 << 20

func updSpec(ver, snaps int, fill1 float64) testimages.Spec {
	s := testimages.Spec{VMFS: ver, Seed: 77, Disks: []testimages.DiskSpec{{Path: "vm1/vm1.vmdk", Type: testimages.Thin, Size: updSize, Fill: 40, Seed: 5}}}
	fills := []float64{fill1, 28, 30}
	for i := range snaps {
		s.Snapshots = append(s.Snapshots, testimages.SnapshotSpec{Base: "vm1/vm1.vmdk", Fill: fills[i], Seed: int64(100 + i)})
	}
	return s
}

// updFormat is one output format of the update tests.
type updFormat struct {
	name  string
	flags []string // convert flags
	ext   string
	qemu  string // qemu-img's name
	check bool   // qemu-img check knows it
}

var updFormats = []updFormat{
	{"raw", []string{"-f", "raw"}, ".raw", "raw", false},
	{"vhd", []string{"-f", "vhd"}, ".vhd", "vpc", false},
	{"vhd-fixed", []string{"-f", "vhd", "--subformat", "fixed"}, ".vhd", "vpc", false},
	// 1 MiB blocks: changes land in blocks with and without storage, so
	// that updates write BAT entries through the log.
	{"vhdx", []string{"-f", "vhdx", "--block-size", "1MiB"}, ".vhdx", "vhdx", true},
	{"qcow2", []string{"-f", "qcow2"}, ".qcow2", "qcow2", true},
	{"qcow2-v2", []string{"-f", "qcow2", "--compat", "0.10"}, ".qcow2", "qcow2", true},
}

func (f updFormat) format() string {
	return strings.TrimSuffix(strings.TrimSuffix(f.name, "-fixed"), "-v2")
}

// pointSHA returns the manifest's sha256 of a chain point.
func pointSHA(t *testing.T, m *testimages.Manifest, p string) string {
	t.Helper()
	for _, d := range m.Disks {
		if d.Path == p {
			return d.SHA256
		}
	}
	t.Fatalf("%s is not in the manifest", p)
	return ""
}

// updRefs writes a full raw conversion of every chain point (checked
// against the manifest): the references qemu-img compares outputs with.
func updRefs(t *testing.T, ds datastore) []string {
	t.Helper()
	dir := t.TempDir()
	var refs []string
	for i, p := range updPoints {
		ref := filepath.Join(dir, fmt.Sprintf("point%d.raw", i))
		if code, _, stderr := runCLI(t, append(ds.cmd("convert", "-q", "--no-record"), ds.volume, p, ref)...); code != 0 {
			t.Fatalf("reference %s: exit %d: %s", p, code, stderr)
		}
		if got := sha256File(t, ref); got != pointSHA(t, ds.m, p) {
			t.Fatalf("reference %s: sha256 %s, manifest %s", p, got, pointSHA(t, ds.m, p))
		}
		refs = append(refs, ref)
	}
	return refs
}

// checkPoint checks that out holds chain point i: through our reader its
// bytes hash to the manifest's sha256 (raw: the file itself); qemu-img
// reads the same as the full raw conversion ref and finds no error; the
// record is complete at that point.
func checkPoint(t *testing.T, ds datastore, f updFormat, out, ref string, i int) {
	t.Helper()
	want := pointSHA(t, ds.m, updPoints[i])
	if f.name == "raw" {
		if got := sha256File(t, out); got != want {
			t.Errorf("%s: sha256 %s, point %d has %s", out, got, i, want)
		}
	} else if got := readerSHA(t, f.format(), out, updSize); got != want {
		t.Errorf("%s read back: sha256 %s, point %d has %s", out, got, i, want)
	}
	rec, err := convert.LoadRecord(convert.SidecarPath(out))
	if err != nil {
		t.Fatalf("record: %v", err)
	}
	if rec.State != convert.StateComplete || len(rec.Source.Chain) != i+1 || rec.Source.Chain[i].File != updPoints[i] || rec.UpdateTarget != nil {
		t.Errorf("record: state %q, chain %+v, target %+v; want complete at %s", rec.State, rec.Source.Chain, rec.UpdateTarget, updPoints[i])
	}
	if fp, err := convert.OutputFingerprint(out, f.format()); err != nil || fp != rec.Output.Fingerprint {
		t.Errorf("fingerprint %+v (%v), recorded %+v", fp, err, rec.Output.Fingerprint)
	}
	oracle.Run(t, "qemu-img", "compare", "-f", f.qemu, "-F", "raw", out, ref)
	if f.check {
		oracle.Run(t, "qemu-img", "check", "-f", f.qemu, out)
	}
}

// readerSHA hashes the first size bytes of the output through its
// format's reader.
func readerSHA(t *testing.T, format, path string, size int64) string {
	t.Helper()
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	fi, _ := file.Stat()
	img, err := outputFormats[format].open(file, fi.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	buf := make([]byte, size)
	if _, err := formats.ReadFull(img, buf, 0); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	h := sha256.Sum256(buf)
	return hex.EncodeToString(h[:])
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("%q: exit %d: %s", args, code, stderr)
	}
	return stdout
}

// updateResult parses convert --json.
func updateResult(t *testing.T, stdout string) result {
	t.Helper()
	var r result
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	return r
}

// Convert the base, then --update through the next one, two and three
// points (each way of naming the new point: its descriptor, --snapshot,
// the leaf), verifying as we go; and the base straight to the leaf. After
// each step the output is the full conversion of that point.
func TestUpdateChain(t *testing.T) {
	oracle.Find(t, "qemu-img")
	for _, ver := range []int{5, 6} {
		t.Run(fmt.Sprintf("vmfs%d", ver), func(t *testing.T) {
			t.Parallel()
			ds := buildDatastore(t, updSpec(ver, 3, 10))
			refs := updRefs(t, ds)
			leaf := updPoints[3]
			for _, f := range updFormats {
				t.Run(f.name, func(t *testing.T) {
					dir := t.TempDir()
					out := filepath.Join(dir, "vm1"+f.ext)
					mustCLI(t, append(append(ds.cmd("convert", "-q", "--base"), f.flags...), ds.volume, leaf, out)...)
					checkPoint(t, ds, f, out, refs[0], 0)
					rec, err := convert.LoadRecord(convert.SidecarPath(out))
					if err != nil {
						t.Fatal(err)
					}
					if rec.Source.VolumeUUID != ds.m.UUID || rec.Source.Disk != updPoints[0] || rec.Output.Format != f.format() || rec.Output.VirtualSize != updSize {
						t.Errorf("record %+v", rec)
					}
					if f.name == "qcow2-v2" && rec.Output.Options["compat"] != "0.10" || f.name == "vhd-fixed" && rec.Output.Options["subformat"] != "fixed" {
						t.Errorf("record options %v", rec.Output.Options)
					}

					// Point 1, named by its descriptor.
					r := updateResult(t, mustCLI(t, append(append(ds.cmd("convert", "--update", "--json"), f.flags...), ds.volume, updPoints[1], out)...))
					if r.Update == nil || r.Update.Layers != 1 || r.Update.From != updPoints[0] || r.Update.To != updPoints[1] || r.Update.Ranges == 0 {
						t.Fatalf("update report %+v", r.Update)
					}
					if r.DataBytes != r.Update.AppliedBytes || r.Update.AppliedBytes != r.Update.DataBytes+r.Update.ZeroBytes+r.Update.MetadataBytes || r.Update.DataBytes == 0 {
						t.Errorf("applied bytes: result %d, report %+v", r.DataBytes, r.Update)
					}
					if r.Update.ChangedBytes >= updSize {
						t.Errorf("changed %d bytes of a 32 MiB disk for one 30 %% delta", r.Update.ChangedBytes)
					}
					checkPoint(t, ds, f, out, refs[1], 1)

					// Point 2 as --snapshot of the leaf, with --verify.
					_, _, stderr := runCLIOK(t, append(append(ds.cmd("convert", "--update", "--verify", "--snapshot", "vm1-000002"), f.flags...), ds.volume, leaf, out)...)
					if !strings.Contains(stderr, "verified") || !strings.Contains(stderr, "applied") {
						t.Errorf("summary: %s", stderr)
					}
					checkPoint(t, ds, f, out, refs[2], 2)

					// Point 3, the leaf, with --verify-changed.
					_, _, stderr = runCLIOK(t, append(append(ds.cmd("convert", "--update", "--verify-changed"), f.flags...), ds.volume, leaf, out)...)
					if !strings.Contains(stderr, "applied ranges verified") {
						t.Errorf("summary: %s", stderr)
					}
					checkPoint(t, ds, f, out, refs[3], 3)

					// Again: nothing to do, nothing touched.
					before := stamp(t, out)
					r = updateResult(t, mustCLI(t, append(append(ds.cmd("convert", "--update", "--json"), f.flags...), ds.volume, leaf, out)...))
					if r.Update == nil || !r.Update.UpToDate || r.DataBytes != 0 {
						t.Errorf("a second update to the same point: %+v", r.Update)
					}
					before.same(t, out)

					// The base straight to the leaf.
					out2 := filepath.Join(dir, "jump"+f.ext)
					mustCLI(t, append(append(ds.cmd("convert", "-q", "--snapshot", "vm1.vmdk"), f.flags...), ds.volume, leaf, out2)...)
					checkPoint(t, ds, f, out2, refs[0], 0)
					r = updateResult(t, mustCLI(t, append(append(ds.cmd("convert", "--update", "--json", "--verify"), f.flags...), ds.volume, leaf, out2)...))
					if r.Update == nil || r.Update.Layers != 3 || !r.Verified {
						t.Errorf("jump: %+v", r.Update)
					}
					checkPoint(t, ds, f, out2, refs[3], 3)
				})
			}
		})
	}
}

func runCLIOK(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("%q: exit %d: %s", args, code, stderr)
	}
	return code, stdout, stderr
}

// fileStamp is what a refused update must leave as it was.
type fileStamp struct {
	sha    string
	mtime  time.Time
	record []byte
}

func stamp(t *testing.T, out string) fileStamp {
	t.Helper()
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := os.ReadFile(convert.SidecarPath(out))
	return fileStamp{sha: sha256File(t, out), mtime: fi.ModTime(), record: rec}
}

func (s fileStamp) same(t *testing.T, out string) {
	t.Helper()
	now := stamp(t, out)
	if now.sha != s.sha || !now.mtime.Equal(s.mtime) {
		t.Errorf("%s changed: sha256 %s → %s, mtime %s → %s", out, s.sha, now.sha, s.mtime, now.mtime)
	}
	if !bytes.Equal(now.record, s.record) {
		t.Errorf("%s: the record changed:\n%s\n→\n%s", out, s.record, now.record)
	}
}

// copyOutput copies an output and its record to a new name, keeping the
// output's mtime (part of the fingerprint).
func copyOutput(t *testing.T, from, to string) {
	t.Helper()
	for _, p := range [][2]string{{from, to}, {convert.SidecarPath(from), convert.SidecarPath(to)}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(to, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
}

// Every refusal names its reason and leaves the output and its record as
// they were.
func TestUpdateRefusals(t *testing.T) {
	ds := buildDatastore(t, updSpec(5, 3, 30))
	// The same volume (UUID, CIDs) where the first snapshot was deleted and
	// taken again: another file size.
	rewritten := buildDatastore(t, updSpec(5, 3, 20))
	// A byte copy of the volume where the first snapshot's descriptor has
	// another CID (same content).
	recid := cidPatched(t, ds, updPoints[1])
	leaf := updPoints[3]
	dir := t.TempDir()
	out := filepath.Join(dir, "vm1.qcow2")
	mustCLI(t, append(ds.cmd("convert", "-q", "--snapshot", "vm1-000001"), ds.volume, leaf, out)...)
	at2 := filepath.Join(dir, "at2.qcow2")
	mustCLI(t, append(ds.cmd("convert", "-q", "--snapshot", "vm1-000002"), ds.volume, leaf, at2)...)
	norec := filepath.Join(dir, "norec.qcow2")
	mustCLI(t, append(ds.cmd("convert", "-q", "--no-record"), ds.volume, updPoints[0], norec)...)
	if _, err := os.Stat(convert.SidecarPath(norec)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("--no-record wrote a record: %v", err)
	}
	modified := filepath.Join(dir, "modified.qcow2")
	copyOutput(t, out, modified)
	fh, err := os.OpenFile(modified, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte("someone else"), 3<<20)
	fh.Close()

	for _, tc := range []struct {
		name   string
		out    string
		volume string
		disk   string
		flags  []string
		want   string
	}{
		{"no record", norec, ds.volume, leaf, nil, "update refused: no record"},
		{"output modified", modified, ds.volume, leaf, nil, "update refused: output changed"},
		{"chain rewritten", out, rewritten.volume, leaf, nil, "update refused: chain rewritten (layer 1)"},
		{"CID mismatch", out, recid, updPoints[1], nil, "update refused: CID mismatch (layer 1)"},
		{"not an ancestor", at2, ds.volume, updPoints[1], nil, "update refused: not an ancestor"},
		{"other format", out, ds.volume, leaf, []string{"-f", "vhdx"}, "update refused: output changed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := stamp(t, tc.out)
			args := append(append([]string{"convert", "-q", "--update"}, tc.flags...), tc.volume, tc.disk, tc.out)
			code, _, stderr := runCLI(t, args...)
			if code != exitFailure || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "the output was not touched") {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", code, stderr, tc.want)
			}
			before.same(t, tc.out)
		})
	}

	// --ignore-cid relaxes the CID check (only): the update of the
	// re-CID'd chain goes through and gives the leaf.
	mustCLI(t, "convert", "-q", "--update", "--ignore-cid", recid, leaf, out)
	if got := readerSHA(t, "qcow2", out, updSize); got != pointSHA(t, ds.m, leaf) {
		t.Errorf("--ignore-cid update: sha256 %s, want the leaf's", got)
	}

	// Usage: --update does not go with --force, --rescue, stdout.
	for _, args := range [][]string{
		{"convert", "--update", "--force", ds.volume, leaf, out},
		{"convert", "--update", "--rescue", ds.volume, leaf, out},
		{"convert", "--update", "-f", "raw", ds.volume, leaf, "-"},
		{"convert", "--verify-changed", ds.volume, leaf, filepath.Join(dir, "x.raw")},
	} {
		if code, _, stderr := runCLI(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d (%s), want a usage error", args, code, stderr)
		}
	}
}

// cidPatched copies ds's volume image with the CID line of descriptor p
// changed (its content stays the same) and returns the copy's path.
func cidPatched(t *testing.T, ds datastore, p string) string {
	t.Helper()
	if len(ds.args) != 0 {
		t.Fatal("a spanned volume")
	}
	img, err := os.ReadFile(ds.volume)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vmfs.OpenFiles(ds.volume)
	if err != nil {
		t.Fatal(err)
	}
	d, err := vmdk.Open(volumeFS(v), p, vmdk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cid := d.Layers()[0].CID
	d.Close()
	v.Close()
	old := fmt.Appendf(nil, "\nCID=%08x\n", cid)
	if n := bytes.Count(img, old); n != 1 {
		t.Fatalf("%q occurs %d times in the image", old, n)
	}
	img = bytes.Replace(img, old, fmt.Appendf(nil, "\nCID=%08x\n", cid^0x5a5a), 1)
	out := filepath.Join(t.TempDir(), "recid.img")
	if err := os.WriteFile(out, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// Outputs record where they came from; --force replaces the record,
// --no-record removes a stale one; stdout gets none.
func TestConvertRecord(t *testing.T) {
	ds := buildDatastore(t, updSpec(6, 1, 30))
	dir := t.TempDir()
	out := filepath.Join(dir, "vm1.vhdx")
	mustCLI(t, append(ds.cmd("convert", "-q", "--base"), ds.volume, updPoints[1], out)...)
	rec, err := convert.LoadRecord(convert.SidecarPath(out))
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(out)
	if rec.State != convert.StateComplete || rec.Output.Fingerprint.Size != fi.Size() || !rec.Output.Fingerprint.ModTime.Equal(fi.ModTime().UTC()) ||
		len(rec.Source.Chain) != 1 || rec.Source.Chain[0].Size != updSize || rec.Source.Chain[0].ParentCID != 0xffffffff || rec.ToolVersion == "" {
		t.Errorf("record %+v", rec)
	}
	mustCLI(t, append(ds.cmd("convert", "-q", "--force"), ds.volume, updPoints[1], out)...)
	if rec, err = convert.LoadRecord(convert.SidecarPath(out)); err != nil || len(rec.Source.Chain) != 2 || rec.Source.Chain[1].File != updPoints[1] || rec.Source.Chain[1].Size == 0 {
		t.Errorf("record after --force: %+v, %v", rec, err)
	}
	if rec.Source.Chain[1].ParentCID != rec.Source.Chain[0].CID {
		t.Errorf("chain CIDs %+v", rec.Source.Chain)
	}
	mustCLI(t, append(ds.cmd("convert", "-q", "--force", "--no-record"), ds.volume, updPoints[1], out)...)
	if _, err := os.Stat(convert.SidecarPath(out)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--no-record left the old record: %v", err)
	}
	// A local VMDK: the record names its directory.
	local := t.TempDir()
	for _, f := range []string{"vm1.vmdk", "vm1-flat.vmdk"} {
		b := mustCLI(t, append(ds.cmd("cat"), ds.volume, "vm1/"+f)...)
		if err := os.WriteFile(filepath.Join(local, f), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lout := filepath.Join(dir, "local.raw")
	mustCLI(t, "convert", "-q", filepath.Join(local, "vm1.vmdk"), lout)
	if rec, err = convert.LoadRecord(convert.SidecarPath(lout)); err != nil || rec.Source.VolumeUUID != local || rec.Source.Disk != "vm1.vmdk" {
		t.Errorf("local record %+v, %v", rec, err)
	}
}

// convert --all --update finds each output by its record (named after the
// leaf it was converted from, which a snapshot taken since has changed);
// convert --vm --update updates each disk of the VM.
func TestUpdateAllAndVM(t *testing.T) {
	oracle.Find(t, "qemu-img")
	before := buildDatastore(t, updSpec(6, 2, 30))
	after := buildDatastore(t, updSpec(6, 3, 30))
	dir := t.TempDir()
	mustCLI(t, append(before.cmd("convert", "-q", "--all", "-f", "qcow2", "--out-dir", dir), before.volume)...)
	out := filepath.Join(dir, "vm1_vm1-000002.qcow2")
	if got := readerSHA(t, "qcow2", out, updSize); got != pointSHA(t, before.m, updPoints[2]) {
		t.Fatalf("--all: %s holds %s", out, got)
	}
	stdout := mustCLI(t, append(after.cmd("convert", "--all", "--update", "--json", "-f", "qcow2", "--out-dir", dir), after.volume)...)
	var rep []batchResult
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep) != 1 || rep[0].Output != out || rep[0].Status != "ok" || rep[0].Data == 0 || rep[0].Data >= updSize {
		t.Fatalf("--all --update report %+v", rep)
	}
	if got := readerSHA(t, "qcow2", out, updSize); got != pointSHA(t, after.m, updPoints[3]) {
		t.Errorf("--all --update: %s holds %s, want the new leaf", out, got)
	}
	if _, err := os.Stat(filepath.Join(dir, "vm1_vm1-000003.qcow2")); err == nil {
		t.Errorf("--all --update made a new output")
	}

	// --vm on a local folder: the .vmx names point 1, then the leaf.
	vmdir := t.TempDir()
	for _, f := range []string{"vm1.vmdk", "vm1-flat.vmdk", "vm1-000001.vmdk", "vm1-000001-sesparse.vmdk", "vm1-000002.vmdk", "vm1-000002-sesparse.vmdk", "vm1-000003.vmdk", "vm1-000003-sesparse.vmdk"} {
		b := mustCLI(t, append(after.cmd("cat"), after.volume, "vm1/"+f)...)
		if err := os.WriteFile(filepath.Join(vmdir, f), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vmx := func(disk string) {
		s := fmt.Sprintf(".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\ndisplayName = \"web01\"\nguestOS = \"ubuntu-64\"\nnumvcpus = \"1\"\nmemSize = \"1024\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"%s\"\n", disk)
		if err := os.WriteFile(filepath.Join(vmdir, "web01.vmx"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vmx("vm1-000001.vmdk")
	vmOut := t.TempDir()
	mustCLI(t, "convert", "-q", "--vm", "web01", "-f", "vhdx", "--out-dir", vmOut, vmdir)
	disk0 := filepath.Join(vmOut, "web01_disk0.vhdx")
	if got := readerSHA(t, "vhdx", disk0, updSize); got != pointSHA(t, after.m, updPoints[1]) {
		t.Fatalf("--vm: %s holds %s", disk0, got)
	}
	vmx("vm1-000003.vmdk")
	stdout = mustCLI(t, "convert", "--vm", "web01", "--update", "--json", "-f", "vhdx", "--out-dir", vmOut, vmdir)
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || len(rep) != 1 || rep[0].Status != "ok" || rep[0].Data == 0 {
		t.Fatalf("--vm --update report %+v (%v)", rep, err)
	}
	if got := readerSHA(t, "vhdx", disk0, updSize); got != pointSHA(t, after.m, updPoints[3]) {
		t.Errorf("--vm --update: %s holds %s, want the leaf", disk0, got)
	}
	oracle.Run(t, "qemu-img", "check", "-f", "vhdx", disk0)
}

// updateWrites returns how many writes (progress reports) the update of
// out to the leaf of ds makes, and for VHDX the count after which the log
// entry is written but no BAT sector yet (0 when the plan has no log).
func updateWrites(t *testing.T, ds datastore, format, out string) (total, afterLog int) {
	t.Helper()
	v, err := vmfs.OpenFiles(ds.volume)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	d, err := vmdk.Open(volumeFS(v), updPoints[3], vmdk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	changes, err := d.ChangedSince(3)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	p, err := convert.PlanUpdate(f, fi.Size(), format, d, changes)
	if err != nil {
		t.Fatal(err)
	}
	count := func(st []formats.Piece) (n int) {
		for _, pc := range st {
			if pc.IsData() {
				n += int((pc.Len + 1<<20 - 1) >> 20)
			} else {
				n++
			}
		}
		return n
	}
	for i, st := range p.Stages {
		total += count(st)
		// [data] [header] [log entry] [BAT] [header]
		if format == "vhdx" && len(p.Stages) >= 4 && i == len(p.Stages)-3 {
			afterLog = total
		}
	}
	return total, afterLog
}

// updProcess is what the tests that run vmfs2vhd as a process and stop it
// mid-update share: the built binary, a VMFS6 datastore whose disk has
// three snapshots, the raw references of its points, and its leaf.
type updProcess struct {
	bin  string
	ds   datastore
	refs []string
	leaf string
}

func newUpdProcess(t *testing.T) updProcess {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	oracle.Find(t, "qemu-img")
	p := updProcess{bin: testBinary(t), ds: buildDatastore(t, updSpec(6, 3, 30)), leaf: updPoints[3]}
	p.refs = updRefs(t, p.ds)
	return p
}

// update runs `vmfs2vhd convert -q --update VOLUME LEAF out` with the
// extra environment (the test hooks) and returns its stderr and error.
func (p updProcess) update(out string, env ...string) (string, error) {
	cmd := exec.Command(p.bin, append(p.ds.cmd("convert", "-q", "--update"), p.ds.volume, p.leaf, out)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	return stderr.String(), err
}

// An update killed (SIGKILL) at seeded points — twice in a row for each
// format — leaves an output that says "update in progress", that a plain
// convert refuses, and that the same --update completes: always the full
// conversion of the leaf. A VHDX killed between its log entry and its BAT
// is also repaired by qemu-img's log replay.
func TestUpdateKilled(t *testing.T) {
	p := newUpdProcess(t)
	ds, refs, leaf := p.ds, p.refs, p.leaf
	rng := rand.New(rand.NewPCG(15, 2026))
	killed := func(t *testing.T, out string, n int) bool {
		t.Helper()
		stderr, err := p.update(out, killAfterEnv+"="+strconv.Itoa(n))
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
				return true
			}
		}
		if err != nil {
			t.Fatalf("update with a kill after %d writes: %v: %s", n, err, stderr)
		}
		return false
	}
	for _, f := range updFormats {
		t.Run(f.name, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base"+f.ext)
			mustCLI(t, append(append(ds.cmd("convert", "-q", "--base"), f.flags...), ds.volume, leaf, base)...)
			total, afterLog := updateWrites(t, ds, f.format(), base)
			if total < 3 || f.name == "vhdx" && afterLog == 0 {
				t.Fatalf("the update makes %d writes (%d up to the log entry)", total, afterLog)
			}
			t.Logf("%d writes (VHDX log entry written after %d)", total, afterLog)
			// The first write, the last, one in between; for VHDX the
			// last write of the log entry.
			points := []int{1, total - 1, 1 + rng.IntN(total-1)}
			if afterLog > 0 {
				points[2] = afterLog
			}
			for k, n := range points {
				out := filepath.Join(dir, fmt.Sprintf("kill%d%s", k, f.ext))
				copyOutput(t, base, out)
				if !killed(t, out, n) {
					t.Fatalf("not killed after %d of %d writes", n, total)
				}
				rec, err := convert.LoadRecord(convert.SidecarPath(out))
				if err != nil || rec.State != convert.StateUpdateInProgress || len(rec.UpdateTarget) != 4 {
					t.Fatalf("record after a kill: %+v, %v", rec, err)
				}
				st := stamp(t, out)
				code, _, stderr := runCLI(t, append(append(ds.cmd("convert", "-q"), f.flags...), ds.volume, leaf, out)...)
				if code == 0 || !strings.Contains(stderr, "unfinished update") {
					t.Errorf("a plain convert over an interrupted update: exit %d, %s", code, stderr)
				}
				st.same(t, out)
				if n == afterLog && f.name == "vhdx" {
					// qemu replays the log: the new BAT over the new data.
					replay := filepath.Join(dir, "replay.vhdx")
					copyOutput(t, out, replay)
					oracle.Run(t, "qemu-img", "check", "-r", "all", "-f", "vhdx", replay)
					oracle.Run(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", replay, refs[3])
				}
				// Killed again while resuming, at a later or earlier write.
				if m := 1 + rng.IntN(total); m < total {
					killed(t, out, m)
				}
				mustCLI(t, append(ds.cmd("convert", "-q", "--update"), ds.volume, leaf, out)...)
				checkPoint(t, ds, f, out, refs[3], 3)
			}
		})
	}
}

// An update interrupted with SIGINT (as Ctrl-C would: the test hook sends
// it to the process itself right after the Nth write and waits until the
// update is cancelled) stops before its next write, exits with status 1
// saying it was interrupted and how to finish, and leaves the record
// "update in progress": for qcow2 an output qemu-img check accepts, and
// for every format one that the same --update completes into the full
// conversion of the leaf. Interrupted after its last write, an update may
// also finish (it syncs and records the new point) — never a record that
// says complete over an output that is not.
func TestUpdateInterrupted(t *testing.T) {
	p := newUpdProcess(t)
	ds, refs, leaf := p.ds, p.refs, p.leaf
	rng := rand.New(rand.NewPCG(15, 2027))
	for _, f := range updFormats {
		t.Run(f.name, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base"+f.ext)
			mustCLI(t, append(append(ds.cmd("convert", "-q", "--base"), f.flags...), ds.volume, leaf, base)...)
			total, _ := updateWrites(t, ds, f.format(), base)
			if total < 4 {
				t.Fatalf("the update makes %d writes", total)
			}
			// The first write, one in between, the last but one, the last.
			for _, n := range []int{1, 2 + rng.IntN(total-3), total - 1, total} {
				t.Run(fmt.Sprintf("after %d of %d writes", n, total), func(t *testing.T) {
					out := filepath.Join(dir, fmt.Sprintf("int%d%s", n, f.ext))
					copyOutput(t, base, out)
					msg, err := p.update(out, killAfterEnv+"="+strconv.Itoa(n), killSignalEnv+"=INT")
					rec, rerr := convert.LoadRecord(convert.SidecarPath(out))
					if rerr != nil {
						t.Fatal(rerr)
					}
					if err == nil {
						// The interrupt came after the last write: the
						// update went on to sync and record.
						if n < total {
							t.Fatalf("exit 0 after an interrupt at write %d of %d: %s", n, total, msg)
						}
						t.Logf("interrupted after the last write: the update finished")
						checkPoint(t, ds, f, out, refs[3], 3)
						return
					}
					var ee *exec.ExitError
					if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
						t.Fatalf("interrupted update: %v (want exit status %d, not death by the signal): %s", err, exitFailure, msg)
					}
					if !strings.Contains(msg, "update interrupted") || !strings.Contains(msg, "run the same convert --update again") {
						t.Errorf("interrupted update says: %s", msg)
					}
					if rec.State != convert.StateUpdateInProgress || len(rec.UpdateTarget) != 4 || len(rec.Source.Chain) != 1 {
						t.Fatalf("record after an interrupt: state %q, chain %d layers, target %d layers", rec.State, len(rec.Source.Chain), len(rec.UpdateTarget))
					}
					if f.format() == "qcow2" {
						oracle.Run(t, "qemu-img", "check", "-f", "qcow2", out)
					}
					// A plain convert refuses it; the same --update finishes it.
					st := stamp(t, out)
					code, _, stderr2 := runCLI(t, append(append(ds.cmd("convert", "-q"), f.flags...), ds.volume, leaf, out)...)
					if code == 0 || !strings.Contains(stderr2, "unfinished update") {
						t.Errorf("a plain convert over an interrupted update: exit %d, %s", code, stderr2)
					}
					st.same(t, out)
					r := updateResult(t, mustCLI(t, append(ds.cmd("convert", "--update", "--json"), ds.volume, leaf, out)...))
					if r.Update == nil || !r.Update.Resumed {
						t.Errorf("re-run report %+v, want a resumed update", r.Update)
					}
					checkPoint(t, ds, f, out, refs[3], 3)
				})
			}
		})
	}
}
