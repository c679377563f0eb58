package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/vmfs2vhd/vmfs2vhd/convert"
	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

func convertCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "output format: raw, vhd, vhdx, qcow2 (default: from OUTPUT's extension; required for -)"},
		&cli.StringFlag{Name: "subformat", Usage: "vhd: dynamic (default) or fixed"},
		&cli.BoolFlag{Name: "azure", Usage: "vhd: fixed VHD with the size rounded up to a whole MiB, as Azure requires"},
		&cli.StringFlag{Name: "cluster-size", Usage: "qcow2 cluster size (default 64KiB)"},
		&cli.StringFlag{Name: "compat", Usage: "qcow2 version: 1.1 (v3, default) or 0.10 (v2)"},
		&cli.StringFlag{Name: "block-size", Usage: "vhdx block size (default 32MiB)"},
		&cli.IntFlag{Name: "sector-size", Usage: "vhdx logical sector size: 512 (default) or 4096"},
		&cli.BoolFlag{Name: "verify", Usage: "read the output back and compare it with the source (exit 4 on a mismatch)"},
		&cli.BoolFlag{Name: "force", Usage: "overwrite an existing output"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress bar and no summary"},
		&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Usage: "reads in flight (default: 4, fewer on small machines)"},
	}
	flags = append(flags, chainFlags()...)
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert a virtual disk to raw, VHD, VHDX or qcow2 in one pass",
		ArgsUsage: "DISK.vmdk OUTPUT",
		Description: `Reads the disk (a VMDK descriptor and its extents, flattening a snapshot chain) and writes
OUTPUT in one pass: data is read once, holes and zero runs are never read or written. OUTPUT is
written under a temporary name and renamed when complete; on an error or an interrupt it is
removed. OUTPUT - streams to stdout (give -f).

EXAMPLES:
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
	if c.NArg() != 2 {
		return usageErrorf("convert: want DISK.vmdk OUTPUT, got %d arguments", c.NArg())
	}
	output := c.Args().Get(1)
	f, err := formatFor(c.String("format"), output)
	if err != nil {
		return err
	}
	fo, err := formatOptionsFrom(c)
	if err != nil {
		return err
	}
	src, err := openLocalDisk(c, c.Args().Get(0))
	if err != nil {
		return err
	}
	defer src.close()
	res, err := convertOne(c.Context, c, src, output, f, fo)
	if err != nil {
		return err
	}
	if !c.Bool("quiet") {
		fmt.Fprintln(c.App.ErrWriter, res.summary())
	}
	return nil
}

func formatOptionsFrom(c *cli.Context) (formatOptions, error) {
	o := formatOptions{subformat: c.String("subformat"), azure: c.Bool("azure"), compat: c.String("compat"), sectorSize: int64(c.Int("sector-size"))}
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
}

func (r result) summary() string {
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
	start := time.Now()
	res := result{Source: src.name, Output: output, Format: f.name, VirtualSize: src.img.Size()}
	exts, err := formats.Extents(src.img)
	if err != nil {
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
	opts := convert.Options{Jobs: c.Int("jobs")}
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
			return res, err
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
		if c.Bool("verify") {
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
	}
	res.DataBytes = st.DataRead
	res.OutputSize = layout.FileSize()
	res.Seconds = time.Since(start).Seconds()
	return res, nil
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
