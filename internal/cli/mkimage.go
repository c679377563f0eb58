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

   --disk PATH,type=thin|lazy|eager|rdmp|rdm,size=SIZE[,fill=PCT][,seed=N]
        a descriptor PATH (e.g. vm1/vm1.vmdk) and its flat extent; fill is the share of the disk
        holding data in percent (default 0 thin, 50 lazy, 100 eager). Lazy disks' blocks without
        data are to-be-zeroed and hold garbage on the volume. type=rdmp / rdm make a raw device
        mapping of a SIZE LUN (physical / virtual compatibility): the descriptor and a
        PATH-rdmp.vmdk / PATH-rdm.vmdk mapping file without data.
   --snapshot PATH[,fill=PCT][,seed=N][,delta=cowd|sesparse]
        one more delta on the chain whose base descriptor is PATH (vm1/vm1-000001.vmdk, then -000002…);
        the default delta is cowd on VMFS3/5 and sesparse on VMFS6.
   --file PATH[,size=SIZE][,type=file|dir|symlink][,target=T][,layout=resident|subblock|blocks|pointer|double|lfb]
          [,entries=N[,prefix=P]]
        entries=N fills a directory with N empty files named P0000, P0001, … (default P "f"), to
        make large directories (VMFS6: shared hash indexes become link groups).
   --vm NAME[,guest=OS][,firmware=bios|efi][,secureboot=1][,cpus=N][,cores=N][,memory=MIB][,running=1]
          ,disk=NODE:TYPE:SIZE[:CONTROLLER[:FILL]]…[,nic=MODEL:MAC:NETWORK]…[,snapshot=NAME|revert=NAME]…
        a VM as ESXi writes it, in folder NAME: .vmx, .vmsd, .nvram, .vmxf, logs, a .vmsn per
        snapshot, a .vswp when running; disks in boot order (NODE scsi0:0, sata0:0, nvme0:0,
        ide0:0; CONTROLLER the SCSI virtualDev: lsilogic, lsisas1068, pvscsi, buslogic); each
        snapshot freezes the disks and starts new deltas, a revert starts them on the disks a
        snapshot froze. --sample-vms adds three such VMs (EFI+pvscsi reverted, SATA+NVMe, IDE
        running). The manifest lists what vms --json must say of each.
   --big-dirs adds testimages.BigDirSpec's directories (300 and 8000 entries; VMFS6: names
        that share one hash index, chained link groups).

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
			&cli.BoolFlag{Name: "big-dirs", Usage: "add large directories (see above)"},
			&cli.StringSliceFlag{Name: "vm", Usage: "add a virtual machine (see above)"},
			&cli.BoolFlag{Name: "sample-vms", Usage: "add three sample virtual machines (see above)"},
			&cli.StringFlag{Name: "block-size", Value: "1MiB", Usage: "file block size: 1MiB, or 2MiB, 4MiB, 8MiB on VMFS3 and with --upgraded"},
			&cli.BoolFlag{Name: "upgraded", Usage: "VMFS5 as an in-place upgrade from VMFS3 leaves it: the VMFS3 block size, 64 KiB sub-blocks, no DENSE_SBPC, .pb2.sf/.sdd.sf found through the FS descriptor, in an MBR partition unless --partition says otherwise"},
			&cli.BoolFlag{Name: "no-dense-sbpc", Usage: "VMFS5 without DENSE_SBPC in its config: sub-block addresses with 4 resource bits"},
			&cli.BoolFlag{Name: "local", Usage: "make VMFS-L (magic 0x2FABF15F, LVM flag 1) with VMFS5 or VMFS6 geometry"},
			&cli.BoolFlag{Name: "minimal", Usage: "lay the system files out by the minimal recipe (every one contiguous and mapped directly) instead of as ESXi does"},
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
		Upgraded: c.Bool("upgraded"), NoDenseSBPC: c.Bool("no-dense-sbpc"), Local: c.Bool("local"),
	}
	if c.Bool("minimal") {
		spec.Layout = testimages.LayoutMinimal
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
	if c.Bool("big-dirs") {
		spec.Files = append(spec.Files, testimages.BigDirSpec(spec.VMFS).Files...)
	}
	if c.Bool("sample-vms") {
		spec.VMs = append(spec.VMs, testimages.SampleVMs()...)
	}
	for _, s := range c.StringSlice("vm") {
		vm, err := parseVMSpec(s)
		if err != nil {
			return usageErrorf("mkimage: --vm %q: %v", s, err)
		}
		spec.VMs = append(spec.VMs, vm)
	}
	var err error
	if spec.BlockSize, err = parseSize(c.String("block-size")); err != nil {
		return usageErrorf("mkimage: --block-size: %v", err)
	}
	switch spec.BlockSize >> 20 {
	case 1, 2, 4, 8:
		if spec.BlockSize&(1<<20-1) != 0 {
			return usageErrorf("mkimage: --block-size %s: want 1MiB, 2MiB, 4MiB or 8MiB", c.String("block-size"))
		}
	default:
		return usageErrorf("mkimage: --block-size %s: want 1MiB, 2MiB, 4MiB or 8MiB", c.String("block-size"))
	}
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
	case testimages.Thin, testimages.Lazy, testimages.Eager, testimages.RDMPhysical, testimages.RDMVirtual:
	case "":
		return d, fmt.Errorf("field type is required: thin, lazy, eager, rdmp or rdm")
	default:
		return d, fmt.Errorf("field type=%q: want thin, lazy, eager, rdmp or rdm", d.Type)
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
	p, kv, err := specFields(s, "size", "type", "target", "layout", "seed", "entries", "prefix")
	if err != nil {
		return testimages.FileSpec{}, err
	}
	f := testimages.FileSpec{Path: p, Type: kv["type"], Target: kv["target"], Layout: kv["layout"], Prefix: kv["prefix"]}
	if v, ok := kv["entries"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 1<<20 {
			return f, fmt.Errorf("field entries=%q: want a count from 0 to 1048576", v)
		}
		if f.Type != "dir" {
			return f, fmt.Errorf("field entries applies to type=dir")
		}
		f.Entries = n
	}
	if v, ok := kv["size"]; ok {
		if f.Size, err = parseSize(v); err != nil {
			return f, fmt.Errorf("field size: %v", err)
		}
	}
	f.Seed, err = parseSeed(kv)
	return f, err
}

// parseVMSpec parses --vm NAME,key=value,…; disk, nic, snapshot and revert
// may repeat and keep their order.
func parseVMSpec(s string) (testimages.VMSpec, error) {
	parts := strings.Split(s, ",")
	vm := testimages.VMSpec{Name: parts[0]}
	if vm.Name == "" || strings.Contains(vm.Name, "/") {
		return vm, fmt.Errorf("want a VM name (no slash) before the first comma")
	}
	num := func(k, v string, max int) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > max {
			return 0, fmt.Errorf("field %s=%q: want 1 to %d", k, v, max)
		}
		return n, nil
	}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return vm, fmt.Errorf("field %q: want key=value", p)
		}
		var err error
		switch k {
		case "guest":
			vm.GuestOS = v
		case "firmware":
			if v != "bios" && v != "efi" {
				return vm, fmt.Errorf("field firmware=%q: want bios or efi", v)
			}
			vm.Firmware = v
		case "secureboot":
			vm.SecureBoot = v == "1" || v == "true"
		case "running":
			vm.Running = v == "1" || v == "true"
		case "cpus":
			vm.CPUs, err = num(k, v, 768)
		case "cores":
			vm.CoresPerSocket, err = num(k, v, 768)
		case "memory":
			vm.MemoryMiB, err = num(k, v, 24<<20)
		case "disk":
			f := strings.Split(v, ":")
			if len(f) < 4 {
				return vm, fmt.Errorf("field disk=%q: want NODE:TYPE:SIZE[:CONTROLLER[:FILL]], e.g. scsi0:0:thin:16MiB:pvscsi", v)
			}
			d := testimages.VMDiskSpec{Node: f[0] + ":" + f[1], Type: f[2], Fill: -1}
			switch d.Type {
			case testimages.Thin, testimages.Lazy, testimages.Eager:
			default:
				return vm, fmt.Errorf("field disk=%q: type %q: want thin, lazy or eager", v, d.Type)
			}
			if d.Size, err = parseSize(f[3]); err != nil || d.Size <= 0 || d.Size%512 != 0 {
				return vm, fmt.Errorf("field disk=%q: size %q: want a positive multiple of 512 bytes", v, f[3])
			}
			if len(f) > 4 {
				d.ControllerType = f[4]
			} else if strings.HasPrefix(d.Node, "scsi") {
				d.ControllerType = "lsilogic"
			}
			if len(f) > 5 {
				if d.Fill, err = parseFill(map[string]string{"fill": f[5]}); err != nil {
					return vm, err
				}
			}
			vm.Disks = append(vm.Disks, d)
		case "nic":
			f := strings.SplitN(v, ":", 8)
			if len(f) != 8 {
				return vm, fmt.Errorf("field nic=%q: want MODEL:MAC:NETWORK, e.g. vmxnet3:00:50:56:01:02:03:VM Network", v)
			}
			vm.NICs = append(vm.NICs, testimages.VMNICSpec{Model: f[0], MAC: strings.ToLower(strings.Join(f[1:7], ":")), Network: f[7]})
		case "snapshot":
			vm.Ops = append(vm.Ops, testimages.VMOp{Snapshot: v, Fill: -1})
		case "revert":
			vm.Ops = append(vm.Ops, testimages.VMOp{Revert: v, Fill: -1})
		default:
			return vm, fmt.Errorf("unknown field %q (known: guest, firmware, secureboot, cpus, cores, memory, running, disk, nic, snapshot, revert)", k)
		}
		if err != nil {
			return vm, err
		}
	}
	if len(vm.Disks) == 0 {
		return vm, fmt.Errorf("a VM needs at least one disk=")
	}
	return vm, nil
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
