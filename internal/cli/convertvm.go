package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx/target"
)

// vmFlags are convert's flags for --vm.
func vmFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "vm", Usage: "convert every disk of this VM (its display name or .vmx path) at the point it runs on, into --out-dir"},
		&cli.StringSliceFlag{Name: "datastore", Usage: "with --vm: NAME|UUID=VOLUME, where the VM's disks on another datastore are (repeat)"},
		&cli.StringFlag{Name: "target", Usage: "with --vm: also write the VM's definition for hyperv, xe, libvirt or proxmox next to its disks"},
		&cli.StringFlag{Name: "target-disk-bus", Usage: "with --target libvirt/proxmox: the disk bus (sata, virtio, scsi, ide; default by guest)"},
		&cli.StringFlag{Name: "target-nic-model", Usage: "with --target libvirt/proxmox: the NIC model (e1000e, virtio, …; default by guest)"},
	}
}

// targetFile names the definition written for a target.
var targetFile = map[string]string{"hyperv": "create-vm.ps1", "xe": "create-vm-xe.sh", "libvirt": "domain.xml", "proxmox": "create-vm-qm.sh"}

// targetFormat is the disk format a target takes when -f is not given.
func targetFormat(t string) string {
	switch t {
	case "hyperv":
		return "vhdx"
	case "xe":
		return "vhd"
	case "libvirt", "proxmox":
		return "qcow2"
	}
	return ""
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// vmFileName makes a VM's name safe for a file name.
func vmFileName(name string) string {
	s := strings.Trim(unsafeName.ReplaceAllString(name, "_"), "_.")
	if s == "" {
		s = "vm"
	}
	return s
}

// vmDiskPoint is one disk of the VM to convert: the descriptor at the
// chosen point and the file system it is on.
type vmDiskPoint struct {
	disk vmx.Disk
	fsys vmdk.FS
	path string
	out  string
	vol  string // for its provenance record (update.go)
}

func runConvertVM(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErrorf("convert --vm: want one VOLUME or DIR argument, got %d", c.NArg())
	}
	if c.Bool("all") || c.Bool("base") {
		return usageErrorf("convert --vm: --all and --base do not apply (use --snapshot NAME for a snapshot of the VM)")
	}
	dir := c.String("out-dir")
	if dir == "" {
		return usageErrorf("convert --vm needs --out-dir DIR")
	}
	tgt := strings.ToLower(c.String("target"))
	if tgt == "hyper-v" {
		tgt = "hyperv"
	}
	if tgt != "" && targetFile[tgt] == "" {
		return usageErrorf("--target %q: want hyperv, xe, libvirt or proxmox", c.String("target"))
	}
	fname := c.String("format")
	if fname == "" {
		if fname = targetFormat(tgt); fname == "" {
			return usageErrorf("convert --vm needs -f/--format (or --target, which picks one)")
		}
	}
	f, err := formatFor(fname, "")
	if err != nil {
		return err
	}
	fo, err := formatOptionsFrom(c)
	if err != nil {
		return err
	}
	s, err := openVMSource(c, c.Args().First())
	if err != nil {
		return err
	}
	defer s.close()
	vms, err := loadVMs(s)
	if err != nil {
		return err
	}
	r, err := findVM(vms, c.String("vm"))
	if err != nil {
		return err
	}
	vm := r.vm
	// Other datastores: NAME|UUID=VOLUME.
	others := map[string]*vmSource{}
	otherIDs := map[string]string{}
	for _, spec := range c.StringSlice("datastore") {
		name, volume, ok := strings.Cut(spec, "=")
		if !ok || name == "" || volume == "" {
			return usageErrorf("--datastore %q: want NAME=VOLUME or UUID=VOLUME", spec)
		}
		o, err := openVMSource(c, volume)
		if err != nil {
			return fmt.Errorf("--datastore %s: %w", name, err)
		}
		defer o.close()
		others[name] = o
		otherIDs[name] = vmRecordID(o, volume)
	}
	// The chain point of each disk: what the .vmx names, or the disks of
	// --snapshot.
	var snapDisks map[string]vmx.SnapshotDisk
	if want := c.String("snapshot"); want != "" {
		var hit *vmx.Snapshot
		for i, sn := range vm.Snapshots {
			if sn.Name == want || sn.UID == want {
				if hit != nil {
					return usageErrorf("--snapshot %q: several snapshots of %s have that name; give its uid (%s, %s)", want, vm.Name, hit.UID, sn.UID)
				}
				hit = &vm.Snapshots[i]
			}
		}
		if hit == nil {
			var names []string
			for _, sn := range vm.Snapshots {
				names = append(names, fmt.Sprintf("%q (uid %s)", sn.Name, sn.UID))
			}
			return usageErrorf("--snapshot %q: %s has no such snapshot; it has: %s", want, vm.Name, strings.Join(names, ", "))
		}
		snapDisks = map[string]vmx.SnapshotDisk{}
		for _, d := range hit.Disks {
			snapDisks[d.Node] = d
		}
	}
	base := vmFileName(vm.Name)
	var points []vmDiskPoint
	var notes []string
	for _, d := range vm.Disks {
		ds, p := d.Datastore, d.Path
		if snapDisks != nil {
			sd, ok := snapDisks[d.Node]
			if !ok {
				notes = append(notes, fmt.Sprintf("disk %s was added after snapshot %q: converted as the .vmx names it", d.Node, c.String("snapshot")))
			} else {
				ds, p = sd.Datastore, sd.Path
			}
		}
		pt := vmDiskPoint{disk: d, fsys: s.fsys, path: p, vol: vmRecordID(s, c.Args().First())}
		switch {
		case d.Raw:
			notes = append(notes, fmt.Sprintf("disk %s is a host's physical disk: not converted", d.Node))
			continue
		case ds != "" && !s.ownDatastore(ds):
			o := others[ds]
			if o == nil {
				return fmt.Errorf("disk %s of %s is on datastore %s (%s): give --datastore %s=VOLUME", d.Node, vm.Name, ds, p, ds)
			}
			pt.fsys, pt.vol = o.fsys, otherIDs[ds]
		case p == "":
			return fmt.Errorf("disk %s of %s: %q cannot be found on this datastore", d.Node, vm.Name, d.FileName)
		}
		pt.out = filepath.Join(dir, fmt.Sprintf("%s_disk%d%s", base, len(points), f.ext()))
		points = append(points, pt)
	}
	if len(points) == 0 {
		return fmt.Errorf("%s has no disk to convert", vm.Name)
	}
	// Open every disk first: an RDM or a broken chain stops the VM before
	// anything is written, and the sizes feed the target's definition.
	srcs := make([]*source, len(points))
	defer func() {
		for _, s := range srcs {
			if s != nil {
				s.close()
			}
		}
	}()
	var tdisks []target.Disk
	for i, pt := range points {
		d, err := vmdk.Open(pt.fsys, pt.path, vmdk.Options{IgnoreCID: c.Bool("ignore-cid")})
		if err != nil {
			if errors.Is(err, vmdk.ErrNotConvertible) {
				return fmt.Errorf("disk %s of %s: %w (convert the VM's other disks one by one, and attach the LUN to the new VM)", pt.disk.Node, vm.Name, err)
			}
			return fmt.Errorf("disk %s of %s: %w", pt.disk.Node, vm.Name, err)
		}
		srcs[i] = &source{img: d, name: pt.path, chain: d.Chain(), close: d.Close, vol: pt.vol}
		tdisks = append(tdisks, target.Disk{Node: pt.disk.Node, File: filepath.Base(pt.out), Format: f.name, Size: d.Size()})
	}
	var definition, defPath string
	if tgt != "" {
		opts := target.Options{DiskBus: c.String("target-disk-bus"), NICModel: c.String("target-nic-model")}
		definition, err = target.Emit(tgt, vm, tdisks, opts)
		if err != nil {
			return err
		}
		defPath = filepath.Join(dir, base+"_"+targetFile[tgt])
		if _, err := os.Stat(defPath); err == nil && !c.Bool("force") {
			return fmt.Errorf("%s exists (give --force to overwrite it)", defPath)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, n := range notes {
		if !c.Bool("quiet") {
			fmt.Fprintf(c.App.ErrWriter, "note: %s\n", n)
		}
	}
	var b batch
	for i, pt := range points {
		if c.Context.Err() != nil {
			break
		}
		src := srcs[i]
		r := batchResult{Disk: pt.disk.Node + " " + pt.path, Size: src.img.Size()}
		res, err := convertOne(c.Context, c, src, pt.out, f, fo)
		r.Output, r.Data, r.OutSize, r.Seconds, r.Verified, r.BadRanges = pt.out, res.DataBytes, res.OutputSize, res.Seconds, res.Verified, res.BadRanges
		b.add(c, r, pt.path, err)
	}
	if definition != "" && b.failed == 0 && c.Context.Err() == nil {
		if err := os.WriteFile(defPath, []byte(definition), 0o644); err != nil {
			return err
		}
		if !c.Bool("quiet") {
			fmt.Fprintf(c.App.ErrWriter, "%s: the definition of %s for %s\n", defPath, vm.Name, tgt)
		}
	}
	return b.finish(c)
}
