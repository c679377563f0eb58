package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo",
		Usage:     "build sample VMFS5 and VMFS6 datastores and convert every disk on them to every format",
		ArgsUsage: "[DIR]",
		Description: `Builds two sample datastores in DIR (default ./demo-out) with thin, lazy-zeroed (TBZ) and
eager-zeroed disks and snapshot chains, lists their disks, converts every disk to raw, VHD,
VHDX and qcow2 with --verify, checks each output with qemu-img when it is installed, compares
the raw output with the generator's ground truth, and prints a table.

EXAMPLE:
   vmfs2vhd demo /tmp/vmfs-demo`,
		Action: runDemo,
	}
}

func runDemo(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	dir := "demo-out"
	if c.NArg() > 1 {
		return usageErrorf("demo: want at most one DIR argument")
	}
	if c.NArg() == 1 {
		dir = c.Args().First()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	w := c.App.Writer
	qemu, _ := exec.LookPath("qemu-img")
	if qemu == "" {
		fmt.Fprintf(w, "(qemu-img is not installed: outputs are checked by --verify only; apt-get install qemu-utils for an independent check)\n\n")
	}
	type row struct {
		vol, disk, format, size, out, verify, qemu, truth string
		secs                                              float64
	}
	var rows []row
	failed := 0
	for _, ver := range []int{5, 6} {
		img := filepath.Join(dir, fmt.Sprintf("sample-vmfs%d.img", ver))
		m, err := testimages.Build(testimages.Sample(ver), img)
		if err != nil {
			return err
		}
		truth := map[string]string{}
		for _, d := range m.Disks {
			truth[d.Path] = d.SHA256
		}
		fmt.Fprintf(w, "== VMFS%d sample datastore %s (%s, UUID %s)\n\n$ vmfs2vhd disks %s\n", ver, img, formatSize(m.Size), m.UUID, img)
		disks, err := volumeDisks(c, img)
		if err != nil {
			return err
		}
		if err := printDisks(c, disks); err != nil {
			return err
		}
		fmt.Fprintln(w)
		outDir := filepath.Join(dir, fmt.Sprintf("vmfs%d-out", ver))
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return err
		}
		for _, d := range disks {
			for _, fname := range slices.Sorted(mapsKeysOf(outputFormats)) {
				f := outputFormats[fname]
				out := filepath.Join(outDir, batchName(d.Path, f.ext()))
				os.Remove(out)
				r := row{vol: fmt.Sprintf("VMFS%d", ver), disk: d.Path, format: fname, verify: "ok", qemu: "-", truth: "-"}
				start := time.Now()
				code, errText := runSub(c, "convert", "-q", "--verify", "-f", fname, img, d.Path, out)
				r.secs = time.Since(start).Seconds()
				if code != 0 {
					r.verify = "FAILED: " + errText
					failed++
					rows = append(rows, r)
					continue
				}
				if st, err := os.Stat(out); err == nil {
					r.size = formatSize(st.Size())
				}
				if qemu != "" {
					r.qemu = qemuCheck(qemu, fname, out)
					if r.qemu != "ok" && r.qemu != "no check" {
						failed++
					}
				}
				if fname == "raw" {
					r.truth = "differs"
					if sha256Path(out) == truth[d.Path] {
						r.truth = "identical"
					} else {
						failed++
					}
				}
				r.out = out
				rows = append(rows, r)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "VOLUME\tDISK\tFORMAT\tOUTPUT SIZE\tSECONDS\t--verify\tqemu-img check\traw vs ground truth\n")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\n", r.vol, r.disk, r.format, r.size, r.secs, r.verify, r.qemu, r.truth)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d conversions, %d problems. Outputs are in %s.\n", len(rows), failed, dir)
	if failed > 0 {
		return fmt.Errorf("demo: %d problems", failed)
	}
	return nil
}

// runSub runs one of our own subcommands in-process.
func runSub(c *cli.Context, args ...string) (int, string) {
	var errb bytes.Buffer
	code := run(context.WithoutCancel(c.Context), append([]string{"vmfs2vhd"}, args...), c.App.Writer, &errb)
	return code, strings.TrimSpace(errb.String())
}

// qemuCheck asks qemu-img to check an output ("ok", "no check" for formats
// qemu cannot check, or the problem).
func qemuCheck(qemu, format, path string) string {
	q := map[string]string{"vhd": "vpc"}[format]
	if q == "" {
		q = format
	}
	if format == "raw" || format == "vhd" {
		if err := exec.Command(qemu, "info", "-f", q, path).Run(); err != nil {
			return "info failed"
		}
		return "no check"
	}
	out, err := exec.Command(qemu, "check", "-f", q, path).CombinedOutput()
	if err != nil {
		return "FAILED: " + strings.TrimSpace(string(out))
	}
	return "ok"
}

func mapsKeysOf[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
