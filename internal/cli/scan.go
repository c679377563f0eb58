package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device"
)

func scanCommand() *cli.Command {
	return &cli.Command{
		Name:      "scan",
		Usage:     "find the VMFS volumes on devices or image files, and which devices are extents of which",
		ArgsUsage: "[DEVICE|IMAGE…]",
		Description: `Probes each DEVICE or IMAGE — with none, every attached device (Linux: /sys/block and its
partitions; Windows: \\.\PhysicalDrive0…N; macOS: /dev/rdisk*) — for VMFS (MBR type 0xFB, GPT
VMFS partitions, an LVM header at 1 MiB, a bare file system at 2 MiB) and groups the devices into
volumes by LVM volume UUID: version, label, UUID, capacity, block size, the extents (device,
partition offset, index of count), extents not found, and whether a host's heartbeat is live.
Devices without VMFS, or that could not be read, are named on stderr.

--json prints an array of volumes (fields: version, label, uuid, lv_uuid, snap_id, capacity,
block_size, extents [device, partition_offset, index, count, logical, length, device_id, size],
missing [index, logical, length, name], live, live_hosts, problem).

Every command that takes VOLUME also takes label:NAME or uuid:UUID, found the same way.

EXAMPLES:
   sudo vmfs2vhd scan
   vmfs2vhd scan --json lun1.img lun2.img lun3.img
   sudo vmfs2vhd convert label:datastore2 vm1/vm1.vmdk vm1.vhdx`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON (an array of volumes)"},
			directFlag(),
		},
		Action: runScan,
	}
}

func runScan(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	r, err := vmfs.Scan(vmfs.ScanOptions{Device: deviceOptions(c)}, c.Args().Slice()...)
	if err != nil {
		return err
	}
	reportOther(c, r)
	if c.Bool("json") {
		e := json.NewEncoder(c.App.Writer)
		e.SetIndent("", "  ")
		return e.Encode(r.Volumes)
	}
	w := c.App.Writer
	if len(r.Volumes) == 0 {
		fmt.Fprintf(w, "no VMFS volume found on %d devices\n", len(r.Other))
		return nil
	}
	for i, v := range r.Volumes {
		if i > 0 {
			fmt.Fprintln(w)
		}
		count := len(v.Extents)
		if len(v.Extents) > 0 {
			count = v.Extents[0].Count
		}
		head := fmt.Sprintf("label %q: VMFS%d, %s, %s blocks, uuid %s", v.Label, v.Version, formatSize(v.Capacity), formatSize(v.BlockSize), v.UUID)
		if v.Version == 0 {
			head = fmt.Sprintf("label unknown: %s, LVM volume %s", formatSize(v.Capacity), v.LVUUID)
		}
		state := []string{fmt.Sprintf("%d of %d extents found", len(v.Extents), count)}
		if v.Complete() {
			state = []string{fmt.Sprintf("%d extents, complete", count)}
			if count == 1 {
				state = []string{"1 extent"}
			}
		}
		if v.Live {
			state = append(state, "live heartbeat of host "+strings.Join(v.LiveHosts, ", ")+" (in use, or imaged while in use)")
		}
		fmt.Fprintf(w, "%s; %s\n", head, strings.Join(state, "; "))
		if v.Problem != "" {
			fmt.Fprintf(w, "  problem: %s\n", v.Problem)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "  EXTENT\tDEVICE\tPARTITION AT\tLOGICAL\tLENGTH\n")
		type row struct {
			idx  int
			line string
		}
		var rows []row
		for _, e := range v.Extents {
			rows = append(rows, row{e.Index, fmt.Sprintf("  %d/%d\t%s\t%s\t%s\t%s\n", e.Index, e.Count, e.Device, formatSize(e.PartitionOffset), formatSize(e.Logical), formatSize(e.Length))})
		}
		for _, m := range v.Missing {
			name := "MISSING"
			if m.Name != "" {
				name += " (LVM name " + m.Name + ")"
			}
			rows = append(rows, row{m.Index, fmt.Sprintf("  %d/%d\t%s\t\t%s\t%s\n", m.Index, count, name, formatSize(m.Logical), formatSize(m.Length))})
		}
		sort.SliceStable(rows, func(i, j int) bool { return rows[i].idx < rows[j].idx })
		for _, r := range rows {
			fmt.Fprint(tw, r.line)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// reportOther names on stderr the devices that hold no VMFS (on one line),
// those skipped for another reason, and those that could not be read (with
// one hint for all).
func reportOther(c *cli.Context, r *vmfs.ScanResult) {
	var denied, notVMFS []string
	hint := ""
	for _, o := range r.Other {
		var ae *device.AccessError
		switch {
		case errors.As(o.Err, &ae):
			denied = append(denied, o.Device)
			hint = ae.Hint
		case errors.Is(o.Err, vmfs.ErrNotVMFS):
			notVMFS = append(notVMFS, o.Device)
		default:
			fmt.Fprintf(c.App.ErrWriter, "skipped: %s: %s\n", o.Device, o.Reason)
		}
	}
	if len(notVMFS) > 0 {
		fmt.Fprintf(c.App.ErrWriter, "not VMFS: %s\n", strings.Join(notVMFS, ", "))
	}
	if len(denied) > 0 {
		fmt.Fprintf(c.App.ErrWriter, "could not read %s: %s\n", strings.Join(denied, ", "), hint)
	}
}
