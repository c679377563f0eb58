package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/vmfs2vhd/vmfs2vhd/convert"
	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
)

// Warm migration: every conversion to a file leaves a provenance record
// beside its output (OUTPUT.vmfs2vhd.json, convert.Record): the volume,
// the disk, each layer of the chain up to the converted point with its CID
// and size, the format and the output's fingerprint. `convert --update`
// brings such an output up to a later point of the same chain by writing
// only what the layers above the recorded point define:
//
//  1. load the record (none: refuse), fingerprint the output, and check
//     with convert.CheckUpdate that the recorded point is an unchanged
//     ancestor of the new one (--ignore-cid relaxes the CID comparison,
//     not the file names and sizes);
//  2. the changed extents are vmdk.Disk.ChangedSince(recorded point): the
//     union of what the upper layers define — allocated, zeroed and
//     unmapped grains — with the kind the new, flattened chain has there
//     (the newest layer wins), so Data is copied from the new point and
//     Zero becomes zeros in the output;
//  3. the record is saved as "update in progress" (with the target chain)
//     before the first write, convert.Apply writes the changes in place
//     (fsync after every stage), and only then is the record saved as
//     complete at the new point, with the new fingerprint.
//
// An update cut short leaves the record "update in progress": a plain
// convert refuses the output (it exists; the message says why), the same
// --update finishes it (the format planners are idempotent). SIGINT and
// SIGTERM cancel the update between two writes: the command says it was
// interrupted and leaves the record "update in progress" — or, when the
// interrupt came before the first write, as it was ("the output was not
// touched"). An update whose last stage was synced before the interrupt
// was noticed is complete and recorded so.
//
// Test hook: with VMFS2VHD_TEST_UPDATE_KILL_AFTER=N in its environment the
// process kills itself (SIGKILL on Unix) right after the Nth write of the
// update (each metadata piece, each data chunk of up to 1 MiB, each zero
// range counts one), before the stage's fsync — update_test.go uses it to
// cut updates short at chosen points. With VMFS2VHD_TEST_UPDATE_KILL_SIGNAL=INT
// as well it interrupts itself instead (SIGINT, as Ctrl-C does) and waits
// until the interrupt has cancelled the update, which then stops before its
// next write.
const (
	killAfterEnv  = "VMFS2VHD_TEST_UPDATE_KILL_AFTER"
	killSignalEnv = "VMFS2VHD_TEST_UPDATE_KILL_SIGNAL"
)

// updateFlags are convert's flags for provenance records and updates.
func updateFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "update", Usage: "bring an existing OUTPUT up to DISK (a later point of the chain it was converted from), writing only what changed since; see \"Warm migration\" in the README"},
		&cli.BoolFlag{Name: "no-record", Usage: "do not write the provenance record OUTPUT.vmfs2vhd.json that --update needs"},
		&cli.BoolFlag{Name: "verify-changed", Usage: "with --update: read back only the applied ranges (and the output's metadata) and compare them with DISK"},
	}
}

// checkUpdateFlags rejects flags that do not go with --update.
func checkUpdateFlags(c *cli.Context) error {
	if !c.Bool("update") {
		if c.Bool("verify-changed") {
			return usageErrorf("convert: --verify-changed goes with --update (a full conversion verifies with --verify)")
		}
		return nil
	}
	for _, fl := range []string{"force", "rescue", "no-record", "target"} {
		if c.IsSet(fl) {
			return usageErrorf("convert --update: --%s does not go with --update", fl)
		}
	}
	if c.Bool("verify") && c.Bool("verify-changed") {
		return usageErrorf("convert --update: give --verify (the whole output) or --verify-changed (the applied ranges), not both")
	}
	return nil
}

// localRecordID names where a local disk was read from, for its record
// (the volume_uuid field, which on a datastore is the VMFS volume's UUID):
// the absolute directory, so that a record never matches the same names
// elsewhere.
func localRecordID(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

// vmRecordID is localRecordID for a --vm source: the volume's UUID, or
// the directory arg.
func vmRecordID(s *vmSource, arg string) string {
	if s.uuid != "" {
		return s.uuid
	}
	return localRecordID(arg)
}

// recordChain describes d's chain, base first, for a record.
func recordChain(d *vmdk.Disk) ([]convert.Layer, error) {
	ls := d.Layers()
	out := make([]convert.Layer, len(ls))
	for i, l := range ls {
		size, err := d.LayerFileSize(i)
		if err != nil {
			return nil, err
		}
		name := l.Name
		if l.Volume != "" {
			name = "/vmfs/volumes/" + l.Volume + "/" + name
		}
		out[len(ls)-1-i] = convert.Layer{File: name, CID: convert.CID(l.CID), ParentCID: convert.CID(l.ParentCID), Size: size}
	}
	return out, nil
}

// recordOptions are the writer options as the CLI names them.
func recordOptions(fo formatOptions) map[string]string {
	m := map[string]string{}
	set := func(k, v string) {
		if v != "" && v != "0" && v != "false" {
			m[k] = v
		}
	}
	set("subformat", fo.subformat)
	set("azure", strconv.FormatBool(fo.azure))
	set("vhd-creator", fo.vhdCreator)
	set("cluster-size", strconv.FormatInt(fo.clusterSize, 10))
	set("compat", fo.compat)
	set("block-size", strconv.FormatInt(fo.blockSize, 10))
	set("sector-size", strconv.FormatInt(fo.sectorSize, 10))
	if len(m) == 0 {
		return nil
	}
	return m
}

// recordConversion writes the provenance record of an output convertOne
// has just committed (not for stdout). With --no-record, or when the
// output has zero-filled unreadable ranges (--rescue), no record is
// written and a stale one from an earlier output of that name is removed.
// A record that cannot be written is a warning: the output is complete,
// only a later --update will refuse it.
func recordConversion(c *cli.Context, src *source, output string, f *outputFormat, fo formatOptions, badBytes int64) error {
	if output == "-" {
		return nil
	}
	side := convert.SidecarPath(output)
	d, ok := src.img.(*vmdk.Disk)
	if c.Bool("no-record") || badBytes > 0 || !ok {
		if err := os.Remove(side); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if badBytes > 0 && !c.Bool("no-record") {
			fmt.Fprintf(c.App.ErrWriter, "note: %s: no provenance record: the output has zero-filled unreadable ranges, --update cannot build on it\n", output)
		}
		return nil
	}
	err := func() error {
		chain, err := recordChain(d)
		if err != nil {
			return err
		}
		fp, err := convert.OutputFingerprint(output, f.name)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		return convert.SaveRecord(side, &convert.Record{
			ToolVersion: versionString(),
			State:       convert.StateComplete,
			Created:     now,
			Updated:     now,
			Source:      convert.Source{VolumeUUID: src.vol, Disk: chain[0].File, Chain: chain},
			Output:      convert.RecordOutput{Format: f.name, Options: recordOptions(fo), VirtualSize: src.img.Size(), Fingerprint: fp},
		})
	}()
	if err != nil {
		fmt.Fprintf(c.App.ErrWriter, "warning: %s: no provenance record written (%v): convert --update will refuse this output\n", output, err)
	}
	return nil
}

// outputExistsHint explains why an existing output is refused when it has
// a record: above all, that it may hold an unfinished update.
func outputExistsHint(output string, err error) error {
	if !errors.Is(err, convert.ErrExists) {
		return err
	}
	rec, rerr := convert.LoadRecord(convert.SidecarPath(output))
	switch {
	case rerr != nil:
		return fmt.Errorf("%w (give --force to overwrite it)", err)
	case rec.State == convert.StateUpdateInProgress:
		return fmt.Errorf("%w and holds an unfinished update (%s says %q): run the same convert --update again to finish it, or give --force to convert anew", err, convert.SidecarPath(output), rec.State)
	}
	return fmt.Errorf("%w (give --force to overwrite it, or --update to bring it up to a later point of %s)", err, rec.Source.Disk)
}

// recordedOutput finds, for convert --all --update, the output in dir whose
// record names the disk whose chain is chain (leaf first) on volume: an
// output is named after the leaf it was converted from, which a snapshot
// taken since has changed. It returns out when there is no such record.
func recordedOutput(dir, out, volume string, chain []string) string {
	if _, err := os.Stat(convert.SidecarPath(out)); err == nil || len(chain) == 0 {
		return out
	}
	base := chain[len(chain)-1]
	matches, _ := filepath.Glob(filepath.Join(dir, "*.vmfs2vhd.json"))
	for _, m := range matches {
		rec, err := convert.LoadRecord(m)
		if err == nil && rec.Source.VolumeUUID == volume && rec.Source.Disk == base {
			return strings.TrimSuffix(m, ".vmfs2vhd.json")
		}
	}
	return out
}

// updateReport is what --update did, in the summary and the JSON result.
type updateReport struct {
	From           string `json:"from"`   // the recorded point (descriptor)
	To             string `json:"to"`     // the new point
	Layers         int    `json:"layers"` // layers applied
	Ranges         int    `json:"ranges"` // changed extents
	ChangedBytes   int64  `json:"changed_bytes"`
	AppliedBytes   int64  `json:"applied_bytes"` // data + zeros + metadata written
	DataBytes      int64  `json:"data_bytes"`
	ZeroBytes      int64  `json:"zero_bytes"`
	MetadataBytes  int64  `json:"metadata_bytes"`
	Resumed        bool   `json:"resumed,omitempty"` // an interrupted update was finished
	UpToDate       bool   `json:"up_to_date,omitempty"`
	VerifiedRanges bool   `json:"verified_changed,omitempty"`
}

func (r result) updateSummary() string {
	u := r.Update
	if u.UpToDate {
		return fmt.Sprintf("%s → %s (%s): already at %s, nothing to apply", r.Source, r.Output, r.Format, u.To)
	}
	v := ""
	switch {
	case r.Verified:
		v = ", verified"
	case u.VerifiedRanges:
		v = ", applied ranges verified"
	}
	res := ""
	if u.Resumed {
		res = " (an interrupted update finished)"
	}
	return fmt.Sprintf("%s → %s (%s): updated %s → %s%s: %d layers, %d ranges, %s changed, %s applied (data %s, zeros %s, metadata %s), output %s, %.2fs%s",
		r.Source, r.Output, r.Format, u.From, u.To, res, u.Layers, u.Ranges, formatSize(u.ChangedBytes), formatSize(u.AppliedBytes),
		formatSize(u.DataBytes), formatSize(u.ZeroBytes), formatSize(u.MetadataBytes), formatSize(r.OutputSize), r.Seconds, v)
}

// refusalHint tells what to do about a refusal.
var refusalHint = map[convert.RefusalReason]string{
	convert.RefuseNoRecord:       "convert it without --update first (that writes the record)",
	convert.RefuseOutputChanged:  "something wrote to the output since vmfs2vhd recorded it; convert again without --update",
	convert.RefuseOtherSource:    "the output was converted from another disk or volume",
	convert.RefuseChainRewritten: "the chain it was converted from was rewritten (a snapshot deleted, consolidated or reverted, or a recorded layer written to); convert again without --update",
	convert.RefuseCIDMismatch:    "a recorded layer's content id changed, or DISK does not descend from the recorded point; convert again, or give --ignore-cid if the layers are known to be unchanged",
	convert.RefuseNotAncestor:    "the recorded point is not an ancestor of DISK: give a later point of the same chain",
}

// relaxCIDs returns chain with the CIDs that ref records copied over the
// layers of the same file, and the first layer past ref made its child:
// --ignore-cid keeps the file and size checks only.
func relaxCIDs(chain, ref []convert.Layer) []convert.Layer {
	out := append([]convert.Layer(nil), chain...)
	for i := 0; i < len(ref) && i < len(out); i++ {
		if out[i].File == ref[i].File {
			out[i].CID, out[i].ParentCID = ref[i].CID, ref[i].ParentCID
		}
	}
	if n := len(ref); n > 0 && n < len(out) {
		out[n].ParentCID = ref[n-1].CID
	}
	return out
}

// updateOne brings output up to the chain point src (convert --update).
func updateOne(ctx context.Context, c *cli.Context, src *source, output string, f *outputFormat) (result, error) {
	start := time.Now()
	res := result{Source: src.name, Output: output, Format: f.name, VirtualSize: src.img.Size()}
	if output == "-" {
		return res, usageErrorf("convert --update: OUTPUT is a file to update, not stdout")
	}
	d, ok := src.img.(*vmdk.Disk)
	if !ok {
		return res, fmt.Errorf("%s: --update needs a VMDK chain", src.name)
	}
	chain, err := recordChain(d)
	if err != nil {
		return res, err
	}
	side := convert.SidecarPath(output)
	refuse := func(err error) error {
		var re *convert.RefusalError
		if errors.As(err, &re) {
			return fmt.Errorf("%s: %w; %s (the output was not touched)", output, err, refusalHint[re.Reason])
		}
		return err
	}
	rec, err := convert.LoadRecord(side)
	if err != nil {
		return res, refuse(err)
	}
	if _, err := os.Stat(output); err != nil {
		return res, fmt.Errorf("%s: the output is missing (its record %s is there): %w", output, side, err)
	}
	fp, err := convert.OutputFingerprint(output, f.name)
	if err != nil && rec.State == convert.StateComplete {
		return res, refuse(&convert.RefusalError{Reason: convert.RefuseOutputChanged, Layer: -1, Detail: fmt.Sprintf("its %s metadata cannot be read: %v", f.name, err)})
	}
	check := chain
	if c.Bool("ignore-cid") {
		check = relaxCIDs(check, rec.Source.Chain)
		if rec.State == convert.StateUpdateInProgress {
			check = relaxCIDs(check, rec.UpdateTarget)
		}
	}
	layers, err := convert.CheckUpdate(rec, src.vol, chain[0].File, check, f.name, fp)
	if err != nil {
		return res, refuse(err)
	}
	u := &updateReport{From: rec.Source.Chain[len(rec.Source.Chain)-1].File, To: chain[len(chain)-1].File, Layers: len(layers), Resumed: rec.State == convert.StateUpdateInProgress}
	res.Update = u
	if len(layers) == 0 && rec.State == convert.StateComplete {
		u.UpToDate = true
		res.OutputSize = fp.Size
		res.Seconds = time.Since(start).Seconds()
		return res, nil
	}
	changes, err := d.ChangedSince(len(layers))
	if err != nil {
		return res, fmt.Errorf("%s: reading the grain tables of the layers above %s: %w", src.name, u.From, err)
	}
	u.Ranges = len(changes)
	for _, e := range changes {
		u.ChangedBytes += e.Len
	}

	opts, finish, err := updateProgress(ctx, c, src)
	if err != nil {
		return res, err
	}
	// From here on the output may change: say so first.
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%s: update interrupted before it began (the output was not touched)", output)
	}
	prev := *rec
	rec.State, rec.UpdateTarget, rec.Updated = convert.StateUpdateInProgress, chain, time.Now().UTC()
	if err := convert.SaveRecord(side, rec); err != nil {
		return res, fmt.Errorf("%s: cannot mark the update in progress: %w", side, err)
	}
	st, err := convert.Apply(ctx, output, f.name, src.img, changes, opts)
	finish()
	u.AppliedBytes, u.DataBytes, u.ZeroBytes, u.MetadataBytes = st.Applied(), st.DataBytes, st.ZeroBytes, st.MetaBytes
	res.DataBytes = st.Applied()
	interrupted := errors.Is(err, context.Canceled)
	if err != nil && st == (convert.ApplyStats{}) {
		// Nothing was written (the output could not be opened, or its
		// format refuses the update, e.g. a VHD whose disk grew, or an
		// interrupt came first): the record goes back to what it said.
		if serr := convert.SaveRecord(side, &prev); serr != nil {
			return res, errors.Join(err, serr)
		}
		if interrupted {
			return res, fmt.Errorf("%s: update interrupted before its first write (the output was not touched)", output)
		}
		return res, fmt.Errorf("%s: %w (the output was not touched)", output, err)
	}
	if interrupted {
		return res, fmt.Errorf("%s: update interrupted after %s written; %s says %q: run the same convert --update again to finish it", output, formatSize(st.Applied()), side, convert.StateUpdateInProgress)
	}
	if err != nil {
		return res, fmt.Errorf("%s: update cut short (%w); %s says %q: run the same convert --update again to finish it", output, err, side, convert.StateUpdateInProgress)
	}
	if c.Bool("verify") || c.Bool("verify-changed") {
		if err := verifyUpdate(ctx, c, src.img, output, f, changes); err != nil {
			if errors.Is(err, context.Canceled) {
				return res, fmt.Errorf("%s: verification interrupted; the update was written and synced, but %s still says %q: run the same convert --update again to verify and record it", output, side, convert.StateUpdateInProgress)
			}
			return res, err
		}
		res.Verified, u.VerifiedRanges = c.Bool("verify"), c.Bool("verify-changed")
	}
	fp, err = convert.OutputFingerprint(output, f.name)
	if err != nil {
		return res, fmt.Errorf("%s: after the update: %w", output, err)
	}
	rec.State, rec.UpdateTarget, rec.Updated, rec.ToolVersion = convert.StateComplete, nil, time.Now().UTC(), versionString()
	rec.Source.Chain = chain
	rec.Output.VirtualSize, rec.Output.Fingerprint = src.img.Size(), fp
	if err := convert.SaveRecord(side, rec); err != nil {
		return res, fmt.Errorf("%s: the output is up to date, but its record could not be saved (%w): run the same convert --update again", side, err)
	}
	res.OutputSize = fp.Size
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// updateProgress returns the progress options of an update and the
// function that ends its bar: on a terminal, a bar created once the plan
// is known (its total is the planned bytes); and the test hook that kills
// or interrupts the process after N writes.
func updateProgress(ctx context.Context, c *cli.Context, src *source) (convert.UpdateOptions, func(), error) {
	var bar *progressbar.ProgressBar
	opts := convert.UpdateOptions{Progress: func(int64) {}}
	finish := func() { finishProgress(bar) }
	if w, ok := c.App.ErrWriter.(*os.File); ok && !c.Bool("quiet") && term.IsTerminal(int(w.Fd())) {
		opts.Planned = func(p *convert.UpdatePlan) { bar = newProgress(c, p.Total(), src.name) }
		opts.Progress = func(n int64) {
			if bar != nil {
				bar.Add64(n)
			}
		}
	}
	if s := os.Getenv(killAfterEnv); s != "" {
		limit, err := strconv.Atoi(s)
		if err != nil || limit < 1 {
			return opts, finish, fmt.Errorf("%s=%q: want a count of writes", killAfterEnv, s)
		}
		interrupt := false
		switch sig := os.Getenv(killSignalEnv); sig {
		case "", "KILL":
		case "INT":
			interrupt = true
		default:
			return opts, finish, fmt.Errorf("%s=%q: want KILL or INT", killSignalEnv, sig)
		}
		inner, writes := opts.Progress, 0
		opts.Progress = func(n int64) {
			inner(n)
			if writes++; writes != limit {
				return
			}
			p, err := os.FindProcess(os.Getpid())
			if err != nil {
				return
			}
			if !interrupt {
				p.Kill()
				select {} // the signal is on its way
			}
			if p.Signal(os.Interrupt) == nil {
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Second):
				}
			}
		}
	}
	return opts, finish, nil
}

// verifyUpdate reads the updated output back through its format's reader
// (which checks its metadata) and compares it with the new point: all of
// it (--verify, convert.Verify) or the applied ranges (--verify-changed).
func verifyUpdate(ctx context.Context, c *cli.Context, src formats.Image, output string, f *outputFormat, changes []formats.Extent) error {
	file, err := os.Open(output)
	if err != nil {
		return err
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return err
	}
	out, err := f.open(file, fi.Size())
	if err != nil {
		return &exitError{code: exitMismatch, err: fmt.Errorf("verification: cannot read the updated output back: %w", err)}
	}
	if c.Bool("verify") {
		err = convert.Verify(ctx, src, out, convert.Options{})
	} else {
		err = verifyRanges(ctx, src, out, changes)
	}
	var me *convert.MismatchError
	if errors.As(err, &me) {
		return &exitError{code: exitMismatch, err: err}
	}
	return err
}

// verifyRanges compares out with src over the changed extents only: Data
// ranges byte for byte, Zero ranges against zeros.
func verifyRanges(ctx context.Context, src, out formats.Image, changes []formats.Extent) error {
	if out.Size() < src.Size() {
		return &convert.MismatchError{Off: out.Size(), Reason: fmt.Sprintf("output size %d is smaller than the source's %d", out.Size(), src.Size())}
	}
	const chunk = 1 << 20
	a, b := make([]byte, chunk), make([]byte, chunk)
	for _, e := range changes {
		for done := int64(0); done < e.Len; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(chunk, e.Len-done)
			off := e.Off + done
			if e.Kind == formats.Data {
				if _, err := formats.ReadFull(src, a[:n], off); err != nil {
					return fmt.Errorf("verification: reading the source at %d: %w", off, err)
				}
			} else {
				clear(a[:n])
			}
			if _, err := formats.ReadFull(out, b[:n], off); err != nil {
				return fmt.Errorf("verification: reading the output at %d: %w", off, err)
			}
			if !bytes.Equal(a[:n], b[:n]) {
				i := 0
				for a[i] == b[i] {
					i++
				}
				return &convert.MismatchError{Off: off + int64(i), Reason: fmt.Sprintf("in the applied range [%d, +%d) (%s)", e.Off, e.Len, e.Kind)}
			}
			done += n
		}
	}
	return nil
}
