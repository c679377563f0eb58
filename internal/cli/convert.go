package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/vmfs2vhd/vmfs2vhd/convert"
	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

func convertCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "output format: raw, vhd, vhdx, qcow2 (default: from OUTPUT's extension; required for -)"},
		&cli.StringFlag{Name: "subformat", Usage: "vhd: dynamic (default) or fixed"},
		&cli.BoolFlag{Name: "azure", Usage: "vhd: fixed VHD with the size rounded up to a whole MiB, as Azure requires"},
		&cli.StringFlag{Name: "vhd-creator", Usage: "vhd: creator application recorded in the footer (default \"win \"; \"tap\" lets XenServer resize the disk)"},
		&cli.StringFlag{Name: "cluster-size", Usage: "qcow2 cluster size (default 64KiB)"},
		&cli.StringFlag{Name: "compat", Usage: "qcow2 version: 1.1 (v3, default) or 0.10 (v2)"},
		&cli.StringFlag{Name: "block-size", Usage: "vhdx block size (default 32MiB)"},
		&cli.IntFlag{Name: "sector-size", Usage: "vhdx logical sector size: 512 (default) or 4096"},
		&cli.BoolFlag{Name: "verify", Usage: "read the output back and compare it with the source (exit 4 on a mismatch)"},
		&cli.BoolFlag{Name: "force", Usage: "overwrite an existing output"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress bar and no summary"},
		&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Usage: "reads in flight (default: 4, fewer on small machines)"},
		extentFlag(), directFlag(),
		&cli.BoolFlag{Name: "all", Usage: "convert every disk of VOLUME (the leaf of each chain) into --out-dir"},
		&cli.StringFlag{Name: "out-dir", Usage: "with --all: where the outputs go (named VMFOLDER_DISK.EXT)"},
		&cli.BoolFlag{Name: "json", Usage: "print the result (with --all: the report) as JSON on stdout"},
		&cli.BoolFlag{Name: "rescue", Usage: "go on past read errors: retry down to single sectors, fill what cannot be read with zeros, report it (exit 5)"},
		&cli.StringFlag{Name: "bad-ranges", Usage: "with --rescue: write the unreadable ranges (virtual-disk offset and length, bytes) to this file"},
	}
	flags = append(flags, chainFlags()...)
	flags = append(flags, vmFlags()...)
	flags = append(flags, updateFlags()...)
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert a virtual disk to raw, VHD, VHDX or qcow2 in one pass",
		ArgsUsage: "VOLUME DISK OUTPUT | DISK.vmdk OUTPUT | --all --out-dir DIR VOLUME | --vm NAME --out-dir DIR VOLUME|DIR",
		Description: `Reads the disk — DISK is a descriptor path inside the datastore VOLUME (a device or image
file; give the other files of a spanned volume with -e), or a VMDK on the local filesystem —
flattening its snapshot chain, and writes OUTPUT in one pass: data is read once, straight from
the VMFS blocks; holes and zero runs are never read or written. OUTPUT is written under a
temporary name and renamed when complete; on an error or an interrupt it is removed. OUTPUT -
streams to stdout (give -f). The source is only ever opened read-only.

--vm converts every disk of a virtual machine at the point it runs on (the disks its .vmx
names; --snapshot NAME for a snapshot of its .vmsd) into --out-dir as VM_disk0.EXT … in boot
order; --datastore NAME=VOLUME tells where its disks on other datastores are; --target hyperv,
xe, libvirt or proxmox also writes the VM's definition for that hypervisor next to the disks
(a PowerShell script, an xe script, a domain XML, qm commands), after checking that the VM fits.

EXAMPLES:
   vmfs2vhd convert datastore1.img vm1/vm1.vmdk vm1.vhdx
   vmfs2vhd convert --all --out-dir /srv/images -f qcow2 datastore1.img
   vmfs2vhd convert --vm web01 --target hyperv --out-dir D:\VMs\web01 \\.\PhysicalDrive2
   vmfs2vhd convert vm1/vm1.vmdk vm1.vhdx
   vmfs2vhd convert -f vhd --subformat fixed --verify vm1/vm1-000002.vmdk vm1.vhd
   vmfs2vhd convert -f qcow2 vm1/vm1.vmdk - | ssh host 'cat > vm1.qcow2'`,
		Flags:  flags,
		Action: runConvert,
	}
}

func runConvert(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if err := checkUpdateFlags(c); err != nil {
		return err
	}
	if c.String("vm") != "" {
		return runConvertVM(c)
	}
	for _, fl := range []string{"datastore", "target", "target-disk-bus", "target-nic-model"} {
		if c.IsSet(fl) {
			return usageErrorf("convert: --%s goes with --vm", fl)
		}
	}
	if c.Bool("all") {
		return runConvertAll(c)
	}
	if c.String("out-dir") != "" {
		return usageErrorf("convert: --out-dir goes with --all or --vm")
	}
	var srcName, output string
	var volume *vmfs.Volume
	switch c.NArg() {
	case 2:
		srcName, output = c.Args().Get(0), c.Args().Get(1)
	case 3:
		srcName, output = c.Args().Get(1), c.Args().Get(2)
	default:
		return usageErrorf("convert: want VOLUME DISK OUTPUT or DISK.vmdk OUTPUT, got %d arguments", c.NArg())
	}
	f, err := formatFor(c.String("format"), output)
	if err != nil {
		return err
	}
	fo, err := formatOptionsFrom(c)
	if err != nil {
		return err
	}
	var src *source
	if c.NArg() == 3 {
		if volume, err = openVolume(c, c.Args().First()); err != nil {
			return err
		}
		defer volume.Close()
		warnIfLive(c, volume)
		src, err = openDisk(c, volumeFS(volume), strings.Trim(srcName, "/"), srcName)
	} else {
		if len(c.StringSlice("extent")) > 0 {
			return usageErrorf("convert: -e/--extent goes with VOLUME DISK OUTPUT")
		}
		src, err = openLocalDisk(c, srcName)
	}
	if err != nil {
		return err
	}
	defer src.close()
	if volume != nil {
		src.vol = volume.Info().UUID
	}
	if c.Bool("json") && output == "-" {
		return usageErrorf("convert: --json prints on stdout, which OUTPUT - already uses")
	}
	if c.String("bad-ranges") != "" && !c.Bool("rescue") {
		return usageErrorf("convert: --bad-ranges goes with --rescue")
	}
	res, err := convertOne(c.Context, c, src, output, f, fo)
	if err != nil && !isBadRangeExit(err) {
		return err
	}
	if c.Bool("json") {
		if jerr := printJSON(c, res); jerr != nil {
			return jerr
		}
	} else if !c.Bool("quiet") {
		fmt.Fprintln(c.App.ErrWriter, res.summary())
	}
	return err
}

// isBadRangeExit is the rescue outcome: the output is complete, with
// zero-filled unreadable ranges.
func isBadRangeExit(err error) bool {
	var ee *exitError
	return errors.As(err, &ee) && ee.code == exitBadRange
}

func formatOptionsFrom(c *cli.Context) (formatOptions, error) {
	o := formatOptions{subformat: c.String("subformat"), azure: c.Bool("azure"), compat: c.String("compat"),
		sectorSize: int64(c.Int("sector-size")), vhdCreator: c.String("vhd-creator")}
	if len(o.vhdCreator) > 4 {
		return o, usageErrorf("--vhd-creator %q: at most 4 bytes", o.vhdCreator)
	}
	var err error
	if s := c.String("cluster-size"); s != "" {
		if o.clusterSize, err = parseSize(s); err != nil {
			return o, usageErrorf("--cluster-size: %v", err)
		}
	}
	if s := c.String("block-size"); s != "" {
		if o.blockSize, err = parseSize(s); err != nil {
			return o, usageErrorf("--block-size: %v", err)
		}
	}
	return o, nil
}

// result describes one finished conversion.
type result struct {
	Source      string   `json:"source"`
	Output      string   `json:"output"`
	Format      string   `json:"format"`
	VirtualSize int64    `json:"virtual_size"`
	DataBytes   int64    `json:"data_bytes"`
	OutputSize  int64    `json:"output_size"`
	Seconds     float64  `json:"seconds"`
	Verified    bool     `json:"verified"`
	Notes       []string `json:"notes,omitempty"`
	// BadRanges lists, in rescue mode, the unreadable source ranges left
	// as zeros in the output.
	BadRanges []convert.BadRange `json:"bad_ranges,omitempty"`
	// Update says what convert --update applied (update.go).
	Update *updateReport `json:"update,omitempty"`
}

func (r result) summary() string {
	if r.Update != nil {
		return r.updateSummary()
	}
	rate := ""
	if r.Seconds > 0 {
		rate = fmt.Sprintf(", %s/s", formatSize(int64(float64(r.DataBytes)/r.Seconds)))
	}
	v := ""
	if r.Verified {
		v = ", verified"
	}
	return fmt.Sprintf("%s → %s (%s): virtual %s, data %s copied, output %s, %.2fs%s%s",
		r.Source, r.Output, r.Format, formatSize(r.VirtualSize), formatSize(r.DataBytes), formatSize(r.OutputSize), r.Seconds, rate, v)
}

// convertOne plans and writes one output.
func convertOne(ctx context.Context, c *cli.Context, src *source, output string, f *outputFormat, fo formatOptions) (result, error) {
	if c.Bool("update") {
		return updateOne(ctx, c, src, output, f)
	}
	start := time.Now()
	res := result{Source: src.name, Output: output, Format: f.name, VirtualSize: src.img.Size()}
	rescue := c.Bool("rescue")
	var bad convert.BadRanges
	var exts []formats.Extent
	var err error
	if rescue {
		exts = convert.RescueExtents(src.img, func(off, n int64, err error) {
			fmt.Fprintf(c.App.ErrWriter, "warning: %s: allocation map unreadable for [%d, +%d): %v; reading that range anyway\n", src.name, off, n, err)
		})
	} else if exts, err = formats.Extents(src.img); err != nil {
		return res, fmt.Errorf("%s: reading the allocation map: %w", src.name, err)
	}
	layout, notes, err := f.plan(src.img.Size(), exts, fo)
	if err != nil {
		return res, err
	}
	res.Notes = notes
	for _, n := range notes {
		fmt.Fprintf(c.App.ErrWriter, "note: %s\n", n)
	}
	var total int64
	for p := range layout.Pieces() {
		if p.IsData() {
			total += p.Len
		}
	}
	opts := convert.Options{Jobs: c.Int("jobs"), Rescue: rescue, BadRange: bad.Add}
	bar := newProgress(c, total, src.name)
	if bar != nil {
		opts.Progress = func(n int64) { bar.Add64(n) }
	}
	var st convert.Stats
	if output == "-" {
		if c.Bool("verify") {
			return res, usageErrorf("--verify needs a file output, not stdout")
		}
		w, ok := c.App.Writer.(io.Writer)
		if !ok {
			w = os.Stdout
		}
		st, err = convert.Stream(ctx, w, layout, src.img, opts)
		finishProgress(bar)
		if err != nil {
			return res, err
		}
	} else {
		out, err := convert.CreateOutput(output, c.Bool("force"))
		if err != nil {
			return res, outputExistsHint(output, err)
		}
		defer out.Abort()
		if err := checkFreeSpace(filepath.Dir(output), layout); err != nil {
			return res, err
		}
		st, err = convert.Write(ctx, out, layout, src.img, opts)
		finishProgress(bar)
		if err != nil {
			return res, err
		}
		if c.Bool("verify") && bad.Total() > 0 {
			fmt.Fprintf(c.App.ErrWriter, "note: %s: --verify skipped: the source has unreadable ranges\n", src.name)
		} else if c.Bool("verify") {
			if err := out.Truncate(layout.FileSize()); err != nil {
				return res, err
			}
			img, err := f.open(out, layout.FileSize())
			if err != nil {
				return res, &exitError{code: exitMismatch, err: fmt.Errorf("verification: cannot read the output back: %w", err)}
			}
			if err := convert.Verify(ctx, src.img, img, convert.Options{}); err != nil {
				var me *convert.MismatchError
				if errors.As(err, &me) {
					return res, &exitError{code: exitMismatch, err: err}
				}
				return res, err
			}
			res.Verified = true
		}
		if err := out.Commit(layout.FileSize()); err != nil {
			return res, err
		}
		if err := recordConversion(c, src, output, f, fo, bad.Total()); err != nil {
			return res, err
		}
	}
	res.DataBytes = st.DataRead
	res.OutputSize = layout.FileSize()
	res.Seconds = time.Since(start).Seconds()
	if list := bad.List(); len(list) > 0 {
		res.BadRanges = list
		if err := reportBadRanges(c, src.name, list); err != nil {
			return res, err
		}
		return res, &exitError{code: exitBadRange, err: fmt.Errorf("%s: output complete, but %d unreadable ranges (%s) are zeros in it", src.name, len(list), formatSize(bad.Total()))}
	}
	return res, nil
}

// reportBadRanges prints a summary on stderr and writes --bad-ranges.
func reportBadRanges(c *cli.Context, name string, list []convert.BadRange) error {
	w := c.App.ErrWriter
	fmt.Fprintf(w, "%s: %d unreadable ranges, left as zeros (virtual-disk offset, length):\n", name, len(list))
	for i, r := range list {
		if i == 20 {
			fmt.Fprintf(w, "  … %d more\n", len(list)-i)
			break
		}
		fmt.Fprintf(w, "  %d +%d: %s\n", r.Off, r.Len, r.Error)
	}
	p := c.String("bad-ranges")
	if p == "" {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# unreadable ranges of %s, left as zeros: offset length (bytes of the virtual disk)\n", name)
	for _, r := range list {
		fmt.Fprintf(&b, "%d %d\n", r.Off, r.Len)
	}
	return os.WriteFile(p, []byte(b.String()), 0o644)
}

// newProgress returns a bar on stderr when stderr is a terminal and -q is
// not given.
func newProgress(c *cli.Context, total int64, name string) *progressbar.ProgressBar {
	if c.Bool("quiet") {
		return nil
	}
	f, ok := c.App.ErrWriter.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(f),
		progressbar.OptionSetDescription(name),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

func finishProgress(bar *progressbar.ProgressBar) {
	if bar != nil {
		bar.Finish()
	}
}
