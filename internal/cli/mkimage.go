package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

func mkimageCommand() *cli.Command {
	return &cli.Command{
		Name:      "mkimage",
		Usage:     "build a synthetic VMFS datastore image with virtual disks (for tests, demos and benchmarks)",
		ArgsUsage: "OUT",
		Description: `Writes a sparse VMFS3/5/6 volume to OUT (or OUT.0 … OUT.N-1 with --extents N) and prints the
ground truth: every file, and every virtual disk with its size, allocated bytes and sha256.

   --disk PATH,type=thin|lazy|eager,size=SIZE[,fill=PCT][,seed=N]
        a descriptor PATH (e.g. vm1/vm1.vmdk) and its flat extent; fill is the share of the disk
        holding data in percent (default 0 thin, 50 lazy, 100 eager). Lazy disks' blocks without
        data are to-be-zeroed and hold garbage on the volume.
   --snapshot PATH[,fill=PCT][,seed=N][,delta=cowd|sesparse]
        one more delta on the chain whose base descriptor is PATH (vm1/vm1-000001.vmdk, then -000002…);
        the default delta is cowd on VMFS3/5 and sesparse on VMFS6.
   --file PATH[,size=SIZE][,type=file|dir|symlink][,target=T][,layout=resident|subblock|blocks|pointer|double]

EXAMPLE:
   vmfs2vhd mkimage --vmfs 6 --disk vm1/vm1.vmdk,type=thin,size=64MiB,fill=30 \
       --snapshot vm1/vm1.vmdk,fill=5 --manifest m.json v6.img`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "vmfs", Value: 5, Usage: "VMFS version: 3, 5 or 6"},
			&cli.StringFlag{Name: "size", Usage: "logical volume size (default: the smallest that fits, in 256 MiB units)"},
			&cli.IntFlag{Name: "extents", Value: 1, Usage: "number of device files of a spanned volume"},
			&cli.StringSliceFlag{Name: "disk", Usage: "add a base disk (see above)"},
			&cli.StringSliceFlag{Name: "snapshot", Usage: "add a delta to a disk's chain (see above)"},
			&cli.StringSliceFlag{Name: "file", Usage: "add a plain file, directory or symlink (see above)"},
			&cli.BoolFlag{Name: "sample", Usage: "add the sample content that covers every layout"},
			&cli.StringFlag{Name: "label", Usage: "volume label"},
			&cli.Int64Flag{Name: "seed", Value: 1, Usage: "seed of UUIDs and content"},
			&cli.StringFlag{Name: "partition", Usage: "put a partition table on each device: mbr or gpt"},
			&cli.BoolFlag{Name: "live-heartbeat", Usage: "leave a live host heartbeat, as a mounted volume has"},
			&cli.StringFlag{Name: "hash-limit", Value: "16GiB", Usage: "skip the sha256 of disks and files larger than this"},
			&cli.StringFlag{Name: "manifest", Usage: "write the ground truth as JSON to this file (- for stdout)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print nothing"},
		},
		Action: runMkimage,
	}
}

func runMkimage(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if c.NArg() != 1 {
		return usageErrorf("mkimage: want exactly one OUT argument, got %d", c.NArg())
	}
	spec := testimages.Spec{
		VMFS: c.Int("vmfs"), Extents: c.Int("extents"), Label: c.String("label"), Seed: c.Int64("seed"),
		Partition: c.String("partition"), LiveHeartbeat: c.Bool("live-heartbeat"),
	}
	if spec.VMFS != 3 && spec.VMFS != 5 && spec.VMFS != 6 {
		return usageErrorf("mkimage: --vmfs %d: want 3, 5 or 6", spec.VMFS)
	}
	if spec.Extents < 1 || spec.Extents > 32 {
		return usageErrorf("mkimage: --extents %d: want 1 to 32", spec.Extents)
	}
	if c.Bool("sample") {
		s := testimages.Sample(spec.VMFS)
		spec.Disks, spec.Snapshots, spec.Files = s.Disks, s.Snapshots, s.Files
	}
	var err error
	if s := c.String("size"); s != "" {
		if spec.Size, err = parseSize(s); err != nil {
			return usageErrorf("mkimage: --size: %v", err)
		}
	}
	if spec.HashLimit, err = parseSize(c.String("hash-limit")); err != nil {
		return usageErrorf("mkimage: --hash-limit: %v", err)
	}
	for _, s := range c.StringSlice("disk") {
		d, err := parseDiskSpec(s)
		if err != nil {
			return usageErrorf("mkimage: --disk %q: %v", s, err)
		}
		spec.Disks = append(spec.Disks, d)
	}
	for _, s := range c.StringSlice("snapshot") {
		sn, err := parseSnapshotSpec(s)
		if err != nil {
			return usageErrorf("mkimage: --snapshot %q: %v", s, err)
		}
		spec.Snapshots = append(spec.Snapshots, sn)
	}
	for _, s := range c.StringSlice("file") {
		f, err := parseFileSpec(s)
		if err != nil {
			return usageErrorf("mkimage: --file %q: %v", s, err)
		}
		spec.Files = append(spec.Files, f)
	}
	out := c.Args().First()
	m, err := testimages.Build(spec, out)
	if err != nil {
		return err
	}
	if p := c.String("manifest"); p != "" {
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if p == "-" {
			_, err = c.App.Writer.Write(b)
		} else {
			err = os.WriteFile(p, b, 0o644)
		}
		if err != nil {
			return err
		}
	}
	if c.Bool("quiet") || c.String("manifest") == "-" {
		return nil
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "VMFS%d volume %q, %s, UUID %s, images: %s\n\n", m.VMFS, m.Label, formatSize(m.Size), m.UUID, strings.Join(m.Images, " "))
	fmt.Fprintf(w, "DISK\tPROVISIONING\tVIRTUAL\tALLOCATED\tSHA256\tCHAIN\n")
	for _, d := range m.Disks {
		sum := d.SHA256
		if len(sum) > 16 {
			sum = sum[:16] + "…"
		} else if sum == "" {
			sum = "(over --hash-limit)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", d.Path, d.Provisioning, formatSize(d.VirtualSize), formatSize(d.Allocated), sum, len(d.Chain))
	}
	return w.Flush()
}

// specFields splits "PATH,key=value,…" and checks the keys.
func specFields(s string, keys ...string) (string, map[string]string, error) {
	parts := strings.Split(s, ",")
	if parts[0] == "" {
		return "", nil, fmt.Errorf("missing PATH before the first comma")
	}
	kv := map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return "", nil, fmt.Errorf("field %q: want key=value", p)
		}
		known := false
		for _, key := range keys {
			known = known || key == k
		}
		if !known {
			return "", nil, fmt.Errorf("unknown field %q (known: %s)", k, strings.Join(keys, ", "))
		}
		if _, dup := kv[k]; dup {
			return "", nil, fmt.Errorf("field %q given twice", k)
		}
		kv[k] = v
	}
	return parts[0], kv, nil
}

func parseFill(kv map[string]string) (float64, error) {
	v, ok := kv["fill"]
	if !ok {
		return -1, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 100 {
		return 0, fmt.Errorf("field fill=%q: want a percentage from 0 to 100", v)
	}
	return f, nil
}

func parseSeed(kv map[string]string) (int64, error) {
	v, ok := kv["seed"]
	if !ok {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("field seed=%q: want an integer", v)
	}
	return n, nil
}

func parseDiskSpec(s string) (testimages.DiskSpec, error) {
	p, kv, err := specFields(s, "type", "size", "fill", "seed")
	if err != nil {
		return testimages.DiskSpec{}, err
	}
	d := testimages.DiskSpec{Path: p, Type: kv["type"]}
	switch d.Type {
	case testimages.Thin, testimages.Lazy, testimages.Eager:
	case "":
		return d, fmt.Errorf("field type is required: thin, lazy or eager")
	default:
		return d, fmt.Errorf("field type=%q: want thin, lazy or eager", d.Type)
	}
	sz, ok := kv["size"]
	if !ok {
		return d, fmt.Errorf("field size is required")
	}
	if d.Size, err = parseSize(sz); err != nil {
		return d, fmt.Errorf("field size: %v", err)
	}
	if d.Size == 0 || d.Size%512 != 0 {
		return d, fmt.Errorf("field size=%q: want a positive multiple of 512 bytes", sz)
	}
	if d.Fill, err = parseFill(kv); err != nil {
		return d, err
	}
	d.Seed, err = parseSeed(kv)
	return d, err
}

func parseSnapshotSpec(s string) (testimages.SnapshotSpec, error) {
	p, kv, err := specFields(s, "fill", "seed", "delta")
	if err != nil {
		return testimages.SnapshotSpec{}, err
	}
	sn := testimages.SnapshotSpec{Base: p, Delta: kv["delta"]}
	switch sn.Delta {
	case "", testimages.COWD, testimages.SESparse:
	default:
		return sn, fmt.Errorf("field delta=%q: want cowd or sesparse", sn.Delta)
	}
	if sn.Fill, err = parseFill(kv); err != nil {
		return sn, err
	}
	sn.Seed, err = parseSeed(kv)
	return sn, err
}

func parseFileSpec(s string) (testimages.FileSpec, error) {
	p, kv, err := specFields(s, "size", "type", "target", "layout", "seed")
	if err != nil {
		return testimages.FileSpec{}, err
	}
	f := testimages.FileSpec{Path: p, Type: kv["type"], Target: kv["target"], Layout: kv["layout"]}
	if v, ok := kv["size"]; ok {
		if f.Size, err = parseSize(v); err != nil {
			return f, fmt.Errorf("field size: %v", err)
		}
	}
	f.Seed, err = parseSeed(kv)
	return f, err
}

// rejectLateFlags fails on an argument after the positionals that looks like
// a flag: urfave/cli/v2 stops parsing flags at the first positional argument
// and would otherwise ignore it silently.
func rejectLateFlags(c *cli.Context) error {
	for _, a := range c.Args().Slice() {
		if strings.HasPrefix(a, "-") && a != "-" {
			return usageErrorf("%s: flag %q after the arguments: put flags before the positional arguments", c.Command.Name, a)
		}
	}
	return nil
}
