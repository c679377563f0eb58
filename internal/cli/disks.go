package cli

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

func disksCommand() *cli.Command {
	return &cli.Command{
		Name:      "disks",
		Usage:     "list the virtual disks of a datastore or directory: chains, sizes, allocation, problems",
		ArgsUsage: "VOLUME|DIR",
		Description: `Lists every virtual disk once, from the leaf of its snapshot chain: virtual size, allocated
bytes of the flattened disk, provisioning (thin, lazy, eager, or the delta format of a chain),
the chain from leaf to base, and problems (missing parent, CID mismatch, orphaned delta).

EXAMPLES:
   vmfs2vhd disks datastore1.img
   vmfs2vhd disks --json /mnt/backup/vm1`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print a JSON array"},
			extentFlag(), directFlag(),
		},
		Action: runDisks,
	}
}

func runDisks(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if c.NArg() != 1 {
		return usageErrorf("disks: want one VOLUME or DIR argument")
	}
	dir := c.Args().First()
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		disks, err := volumeDisks(c, dir)
		if err != nil {
			return err
		}
		return printDisks(c, disks)
	}
	names, err := localVMDKs(dir)
	if err != nil {
		return err
	}
	disks, err := vmdk.Scan(vmdk.DirFS(dir), names)
	if err != nil {
		return err
	}
	return printDisks(c, disks)
}

// localVMDKs lists the .vmdk files below dir, as slash paths relative to it.
func localVMDKs(dir string) ([]string, error) {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.EqualFold(filepath.Ext(p), ".vmdk") {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			names = append(names, filepath.ToSlash(rel))
		}
		return nil
	})
	return names, err
}

func printDisks(c *cli.Context, disks []vmdk.DiskInfo) error {
	if c.Bool("json") {
		if disks == nil {
			disks = []vmdk.DiskInfo{}
		}
		b, err := json.MarshalIndent(disks, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c.App.Writer, "%s\n", b)
		return err
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "DISK\tVIRTUAL\tALLOCATED\tPROVISIONING\tCHAIN\tPROBLEMS\n")
	for _, d := range disks {
		chain := fmt.Sprint(len(d.Chain))
		if len(d.Chain) > 1 {
			chain += " (base " + d.Chain[len(d.Chain)-1] + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Path, formatSize(d.VirtualSize), formatSize(d.Allocated), d.Provisioning, chain, strings.Join(d.Problems, "; "))
	}
	return w.Flush()
}

// volumeDisks lists the disks of the VMFS volume at path.
func volumeDisks(c *cli.Context, volume string) ([]vmdk.DiskInfo, error) {
	v, err := openVolume(c, volume)
	if err != nil {
		return nil, err
	}
	defer v.Close()
	names, err := volumeVMDKs(v)
	if err != nil {
		return nil, err
	}
	return scanVolume(v, names)
}

func scanVolume(v *vmfs.Volume, names []string) ([]vmdk.DiskInfo, error) {
	return vmdk.Scan(volumeFS(v), names)
}
