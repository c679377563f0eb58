package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo",
		Usage:     "build sample VMFS5 and VMFS6 datastores and show what is on them",
		ArgsUsage: "[DIR]",
		Description: `Builds two sample datastores in DIR (default ./demo-out) with thin, lazy-zeroed (TBZ) and
eager-zeroed disks and snapshot chains, prints the ground truth, and — where vmfs-tools and
vmfs6-tools are installed — lists them with the independent readers debugvmfs/debugvmfs6.

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
	for _, ver := range []int{5, 6} {
		img := filepath.Join(dir, fmt.Sprintf("sample-vmfs%d.img", ver))
		spec := testimages.Sample(ver)
		m, err := testimages.Build(spec, img)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "== VMFS%d sample datastore %s (%s logical, UUID %s)\n\n", ver, img, formatSize(m.Size), m.UUID)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "DISK\tPROVISIONING\tVIRTUAL\tALLOCATED\tLAYERS\tSHA256\n")
		for _, d := range m.Disks {
			if !d.Leaf {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.16s…\n", d.Path, d.Provisioning, formatSize(d.VirtualSize), formatSize(d.Allocated), len(d.Chain), d.SHA256)
		}
		tw.Flush()
		tool := "debugvmfs"
		if ver == 6 {
			tool = "debugvmfs6"
		}
		path, err := exec.LookPath(tool)
		if err != nil {
			for _, d := range []string{"/usr/sbin/", "/sbin/"} {
				if _, e := os.Stat(d + tool); e == nil {
					path, err = d+tool, nil
				}
			}
		}
		if err != nil {
			fmt.Fprintf(w, "\n(%s is not installed: apt-get install vmfs-tools vmfs6-tools to see an independent listing)\n\n", tool)
			continue
		}
		fmt.Fprintf(w, "\n%s %s ls -l /vm1 (an independent reader):\n", tool, filepath.Base(img))
		var out bytes.Buffer
		cmd := exec.Command(path, img, "ls", "-l", "/vm1")
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(os.Environ(), "TZ=UTC")
		_ = cmd.Run()
		for _, line := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
			if !strings.HasPrefix(line, "VMFS version") {
				fmt.Fprintf(w, "   %s\n", line)
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Try: vmfs2vhd mkimage --help\n")
	return nil
}
