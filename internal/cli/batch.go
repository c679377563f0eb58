package cli

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/convert"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
)

// batchResult is one disk's line of the --all report.
type batchResult struct {
	Disk     string  `json:"disk"`
	Output   string  `json:"output,omitempty"`
	Status   string  `json:"status"` // ok, skipped (an RDM), failed, mismatch, bad-ranges
	Error    string  `json:"error,omitempty"`
	Size     int64   `json:"virtual_size"`
	Data     int64   `json:"data_bytes"`
	OutSize  int64   `json:"output_size"`
	Seconds  float64 `json:"seconds"`
	Verified bool    `json:"verified"`
	// BadRanges: rescue mode's unreadable ranges, zero-filled.
	BadRanges []convert.BadRange `json:"bad_ranges,omitempty"`
}

// batchName names the output of a disk: VMFOLDER_DISK.EXT.
func batchName(disk, ext string) string {
	dir, base := path.Split(disk)
	name := strings.TrimSuffix(base, path.Ext(base))
	if d := strings.Trim(dir, "/"); d != "" {
		name = strings.ReplaceAll(d, "/", "_") + "_" + name
	}
	return name + ext
}

func runConvertAll(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErrorf("convert --all: want one VOLUME argument, got %d", c.NArg())
	}
	dir := c.String("out-dir")
	if dir == "" {
		return usageErrorf("convert --all needs --out-dir DIR")
	}
	if c.String("snapshot") != "" {
		return usageErrorf("convert --all: --snapshot names one disk's chain point; use --base or convert that disk alone")
	}
	name := c.String("format")
	if name == "" {
		return usageErrorf("convert --all needs -f/--format")
	}
	f, err := formatFor(name, "")
	if err != nil {
		return err
	}
	fo, err := formatOptionsFrom(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	v, err := openVolume(c, c.Args().First())
	if err != nil {
		return err
	}
	defer v.Close()
	warnIfLive(c, v)
	names, err := volumeVMDKs(v)
	if err != nil {
		return err
	}
	disks, err := scanVolume(v, names)
	if err != nil {
		return err
	}
	var b batch
	for _, d := range disks {
		if c.Context.Err() != nil {
			break
		}
		r := batchResult{Disk: d.Path, Size: d.VirtualSize}
		out := filepath.Join(dir, batchName(d.Path, f.ext()))
		if c.Bool("update") {
			out = recordedOutput(dir, out, v.Info().UUID, d.Chain)
		}
		src, err := openDisk(c, volumeFS(v), d.Path, d.Path)
		if err == nil {
			src.vol = v.Info().UUID
			var res result
			res, err = convertOne(c.Context, c, src, out, f, fo)
			src.close()
			r.Output, r.Data, r.OutSize, r.Seconds, r.Verified = out, res.DataBytes, res.OutputSize, res.Seconds, res.Verified
			r.BadRanges = res.BadRanges
		}
		b.add(c, r, d.Path, err)
	}
	return b.finish(c)
}

// batch collects the outcomes of several conversions (--all, --vm).
type batch struct {
	report              []batchResult
	failed              int
	mismatch, badRanges bool
}

// add records one disk's outcome: ok; skipped (an RDM: its data is on a
// LUN, not on the datastore); bad-ranges (rescue mode); failed or mismatch.
func (b *batch) add(c *cli.Context, r batchResult, name string, err error) {
	r.Status = "ok"
	var ee *exitError
	switch {
	case err == nil:
	case errors.Is(err, vmdk.ErrNotConvertible):
		r.Status, r.Error = "skipped", err.Error()
		if !c.Bool("quiet") {
			fmt.Fprintf(c.App.ErrWriter, "note: %s skipped: %v\n", name, err)
		}
	case isBadRangeExit(err):
		r.Status, r.Error, b.badRanges = "bad-ranges", err.Error(), true
	default:
		r.Status, r.Error = "failed", err.Error()
		if errors.As(err, &ee) && ee.code == exitMismatch {
			r.Status, b.mismatch = "mismatch", true
		}
		b.failed++
		if !c.Bool("quiet") {
			fmt.Fprintf(c.App.ErrWriter, "vmfs2vhd: %s: %v\n", name, err)
		}
	}
	b.report = append(b.report, r)
}

func (b *batch) finish(c *cli.Context) error {
	return finishBatch(c, b.report, b.failed, b.mismatch, b.badRanges)
}

// finishBatch prints the report of several conversions (a table, or JSON
// with --json) and turns the outcome into the exit error.
func finishBatch(c *cli.Context, report []batchResult, failed int, mismatch, badRanges bool) error {
	if c.Bool("json") {
		if report == nil {
			report = []batchResult{}
		}
		if err := printJSON(c, report); err != nil {
			return err
		}
	} else {
		w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
		fmt.Fprintf(w, "DISK\tSTATUS\tVIRTUAL\tDATA\tOUTPUT SIZE\tSECONDS\tVERIFIED\tOUTPUT\n")
		for _, r := range report {
			out := r.Output
			if r.Error != "" {
				out = r.Error
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%.2f\t%v\t%s\n", r.Disk, r.Status, formatSize(r.Size), formatSize(r.Data), formatSize(r.OutSize), r.Seconds, r.Verified, out)
		}
		w.Flush()
	}
	if err := c.Context.Err(); err != nil {
		return err
	}
	switch {
	case mismatch:
		return &exitError{code: exitMismatch, err: fmt.Errorf("%d of %d disks failed, some verification mismatches", failed, len(report))}
	case failed > 0:
		return fmt.Errorf("%d of %d disks failed", failed, len(report))
	case badRanges:
		return &exitError{code: exitBadRange, err: fmt.Errorf("some outputs have zero-filled unreadable ranges (see the report)")}
	}
	return nil
}
