package testimages

import (
	"fmt"
	"path"
	"sort"
	"strings"
)

// VMSpec asks for a virtual machine as ESXi writes one: a folder named
// after it holding the .vmx, the .vmsd of its snapshot tree, .nvram, .vmxf,
// logs, a .vmsn per snapshot, its disks with their snapshot deltas and,
// when it runs, a .vswp.
type VMSpec struct {
	Name           string // display name and folder
	GuestOS        string // guestOS, e.g. "windows2019srv-64", "ubuntu-64"
	Firmware       string // "bios" (or "": the key is left out, as ESXi does) or "efi"
	SecureBoot     bool
	CPUs           int // numvcpus; 0 means 1
	CoresPerSocket int // 0 leaves the key out
	MemoryMiB      int // memSize; 0 means 1024
	HWVersion      int // virtualHW.version; 0 means 19 (ESXi 7.0 U2)
	Disks          []VMDiskSpec
	NICs           []VMNICSpec
	// Ops are what happened to the VM after its disks were created, in
	// order: each writes Fill percent of every disk into a new delta.
	Ops []VMOp
	// Running leaves a swap file (.vswp) beside the .vmx, as a powered-on
	// VM has.
	Running bool
}

// VMDiskSpec is one hard disk of a VM.
type VMDiskSpec struct {
	Node string // "scsi0:0", "sata0:1", "nvme0:0", "ide0:0"
	// ControllerType is the virtualDev of a SCSI controller (lsilogic,
	// lsisas1068, pvscsi, buslogic); SATA, NVMe and IDE take none.
	ControllerType string
	Type           string // Thin, Lazy or Eager (a base disk in the VM's folder)
	Size           int64
	Fill           float64
	Mode           string // "" (persistent) or independent-persistent / -nonpersistent
	// Datastore, when set, puts the disk on another datastore: the .vmx
	// names /vmfs/volumes/Datastore/Path and nothing is built here (build
	// that datastore with a DiskSpec of Path).
	Datastore, Path string
}

// VMNICSpec is one network adapter.
type VMNICSpec struct {
	Model   string // e1000, e1000e, vmxnet3
	MAC     string // lower case with colons
	Network string
	Static  bool // addressType "static" (else "generated")
}

// VMOp is one step of a VM's life: Snapshot takes a snapshot of that name
// (the current disks are frozen, new deltas receive the writes); Revert
// goes back to a snapshot (new deltas on the disks it froze). Fill is the
// percent of every disk the guest then writes; < 0 means 5.
type VMOp struct {
	Snapshot, Revert string
	Fill             float64
}

// ManifestVM is what `vmfs2vhd vms --json` must say of a VM.
type ManifestVM struct {
	Name            string           `json:"name"`
	VMX             string           `json:"vmx"`
	GuestOS         string           `json:"guest_os"`
	Firmware        string           `json:"firmware"`
	SecureBoot      bool             `json:"secure_boot"`
	CPUs            int              `json:"cpus"`
	MemoryMiB       int64            `json:"memory_mib"`
	Disks           []ManifestVMDisk `json:"disks"`
	NICs            []ManifestVMNIC  `json:"nics"`
	Snapshots       []ManifestVMSnap `json:"snapshots"`
	CurrentSnapshot string           `json:"current_snapshot"`
	Running         bool             `json:"running"`
}

// ManifestVMDisk is a disk at the point the VM runs on, in boot order.
type ManifestVMDisk struct {
	Controller     string   `json:"controller"` // "scsi0"
	Bus            int      `json:"bus"`        // controller number
	Unit           int      `json:"unit"`
	ControllerType string   `json:"controller_type"`
	Path           string   `json:"path"`
	Datastore      string   `json:"datastore,omitempty"`
	Chain          []string `json:"chain"` // Path to base; empty on another datastore
	VirtualSize    int64    `json:"virtual_size"`
	Mode           string   `json:"mode"`
	// Snapshots maps a snapshot's name to the descriptor it froze.
	Snapshots map[string]string `json:"snapshot_points,omitempty"`
}

// ManifestVMNIC is one network adapter.
type ManifestVMNIC struct {
	Model   string `json:"model"`
	MAC     string `json:"mac"`
	Network string `json:"network"`
}

// ManifestVMSnap is one snapshot of the .vmsd.
type ManifestVMSnap struct {
	Name   string `json:"name"`
	UID    string `json:"uid"`
	Parent string `json:"parent"`
}

// vmPlan is a VM expanded into the volume's specs, kept for its manifest.
type vmPlan struct {
	spec    VMSpec
	m       ManifestVM
	current map[string]string // node → descriptor the .vmx names
}

var vmControllerOrder = map[string]int{"ide": 0, "scsi": 1, "sata": 2, "nvme": 3}

// splitNode parses "scsi0:1" into ("scsi", 0, 1).
func splitNode(node string) (bus string, num, unit int, err error) {
	i := strings.IndexAny(node, "0123456789")
	if i <= 0 {
		return "", 0, 0, fmt.Errorf("testimages: disk node %q: want BUSN:M", node)
	}
	bus = node[:i]
	if _, ok := vmControllerOrder[bus]; !ok {
		return "", 0, 0, fmt.Errorf("testimages: disk node %q: bus %q", node, bus)
	}
	if _, err := fmt.Sscanf(node[i:], "%d:%d", &num, &unit); err != nil {
		return "", 0, 0, fmt.Errorf("testimages: disk node %q: %v", node, err)
	}
	return bus, num, unit, nil
}

// expandVMs turns spec.VMs into disks, snapshots and files of spec.
func expandVMs(spec Spec) (Spec, []*vmPlan, error) {
	var plans []*vmPlan
	for vi, vm := range spec.VMs {
		if vm.Name == "" || strings.ContainsAny(vm.Name, "/\"") {
			return spec, nil, fmt.Errorf("testimages: VM name %q", vm.Name)
		}
		dir := vm.Name
		p := &vmPlan{spec: vm, current: map[string]string{}}
		if vm.CPUs == 0 {
			vm.CPUs = 1
		}
		if vm.MemoryMiB == 0 {
			vm.MemoryMiB = 1024
		}
		if vm.HWVersion == 0 {
			vm.HWVersion = 19
		}
		fw := vm.Firmware
		if fw == "" {
			fw = "bios"
		}
		p.m = ManifestVM{Name: vm.Name, VMX: dir + "/" + vm.Name + ".vmx", GuestOS: vm.GuestOS, Firmware: fw,
			SecureBoot: vm.SecureBoot && fw == "efi", CPUs: vm.CPUs, MemoryMiB: int64(vm.MemoryMiB), Running: vm.Running,
			NICs: []ManifestVMNIC{}, Snapshots: []ManifestVMSnap{}, Disks: []ManifestVMDisk{}}
		// Local disks: one base each, then the deltas of the ops.
		count := map[string]int{} // base → deltas made
		type snap struct {
			name, uid, parent string
			disks             map[string]string // node → frozen descriptor
			vmsn              string
		}
		var snaps []snap
		cur := ""
		base := map[string]string{}
		for i, d := range vm.Disks {
			if _, _, _, err := splitNode(d.Node); err != nil {
				return spec, nil, err
			}
			if d.Datastore != "" {
				p.current[d.Node] = d.Path
				continue
			}
			name := vm.Name
			if i > 0 {
				name = fmt.Sprintf("%s_%d", vm.Name, i)
			}
			b := dir + "/" + name + ".vmdk"
			base[d.Node] = b
			p.current[d.Node] = b
			spec.Disks = append(spec.Disks, DiskSpec{Path: b, Type: d.Type, Size: d.Size, Fill: d.Fill, Seed: int64(vi*100 + i + 1)})
		}
		delta := func(node string, parent string, fill float64) string {
			b := base[node]
			count[b]++
			spec.Snapshots = append(spec.Snapshots, SnapshotSpec{Base: b, Parent: parent, Fill: fill})
			return strings.TrimSuffix(b, ".vmdk") + fmt.Sprintf("-%06d.vmdk", count[b])
		}
		for _, op := range vm.Ops {
			fill := op.Fill
			if fill < 0 {
				fill = 5
			}
			switch {
			case op.Snapshot != "":
				s := snap{name: op.Snapshot, uid: fmt.Sprint(len(snaps) + 1), parent: cur, disks: map[string]string{},
					vmsn: fmt.Sprintf("%s/%s-Snapshot%d.vmsn", dir, vm.Name, len(snaps)+1)}
				for _, d := range vm.Disks {
					if d.Datastore != "" {
						continue
					}
					s.disks[d.Node] = p.current[d.Node]
					if strings.HasPrefix(d.Mode, "independent") {
						continue // independent disks are not snapshotted
					}
					p.current[d.Node] = delta(d.Node, p.current[d.Node], fill)
				}
				snaps = append(snaps, s)
				cur = s.uid
			case op.Revert != "":
				var to *snap
				for i := range snaps {
					if snaps[i].name == op.Revert {
						to = &snaps[i]
					}
				}
				if to == nil {
					return spec, nil, fmt.Errorf("testimages: VM %s: revert to unknown snapshot %q", vm.Name, op.Revert)
				}
				for _, d := range vm.Disks {
					if d.Datastore != "" || strings.HasPrefix(d.Mode, "independent") {
						continue
					}
					p.current[d.Node] = delta(d.Node, to.disks[d.Node], fill)
				}
				cur = to.uid
			default:
				return spec, nil, fmt.Errorf("testimages: VM %s: an op names neither a snapshot nor a revert", vm.Name)
			}
		}
		// The .vmx, as ESXi 7 writes it (keys in its order and case).
		var x strings.Builder
		kv := func(k, v string) { fmt.Fprintf(&x, "%s = \"%s\"\n", k, v) }
		kv(".encoding", "UTF-8")
		kv("config.version", "8")
		kv("virtualHW.version", fmt.Sprint(vm.HWVersion))
		kv("vmci0.present", "TRUE")
		kv("floppy0.present", "FALSE")
		kv("numvcpus", fmt.Sprint(vm.CPUs))
		if vm.CoresPerSocket > 0 {
			kv("cpuid.coresPerSocket", fmt.Sprint(vm.CoresPerSocket))
		}
		kv("memSize", fmt.Sprint(vm.MemoryMiB))
		if fw == "efi" {
			kv("firmware", "efi")
			if vm.SecureBoot {
				kv("uefi.secureBoot.enabled", "TRUE")
			}
		}
		kv("tools.upgrade.policy", "manual")
		seen := map[string]bool{}
		buses := map[string]bool{}
		for _, d := range vm.Disks {
			bus, num, _, _ := splitNode(d.Node)
			ctl := fmt.Sprintf("%s%d", bus, num)
			buses[bus] = true
			if seen[ctl] {
				continue
			}
			seen[ctl] = true
			if bus == "scsi" {
				kv(ctl+".virtualDev", d.ControllerType)
			}
			kv(ctl+".present", "TRUE")
		}
		for _, d := range vm.Disks {
			if bus, _, _, _ := splitNode(d.Node); bus == "ide" {
				kv(d.Node+".deviceType", "ata-hardDisk")
			} else {
				kv(d.Node+".deviceType", "scsi-hardDisk")
			}
			name := path.Base(p.current[d.Node])
			if d.Datastore != "" {
				name = "/vmfs/volumes/" + d.Datastore + "/" + d.Path
			}
			kv(d.Node+".fileName", name)
			if d.Mode != "" {
				kv(d.Node+".mode", d.Mode)
			}
			kv(d.Node+".present", "TRUE")
		}
		if len(buses) > 1 {
			var order []string
			for _, d := range vm.Disks {
				order = append(order, d.Node)
			}
			kv("bios.hddOrder", strings.Join(order, ","))
		}
		for i, n := range vm.NICs {
			e := fmt.Sprintf("ethernet%d", i)
			kv(e+".virtualDev", n.Model)
			kv(e+".networkName", n.Network)
			if n.Static {
				kv(e+".addressType", "static")
				kv(e+".address", n.MAC)
			} else {
				kv(e+".addressType", "generated")
				kv(e+".generatedAddress", n.MAC)
			}
			kv(e+".uptCompatibility", "TRUE")
			kv(e+".present", "TRUE")
			p.m.NICs = append(p.m.NICs, ManifestVMNIC{Model: n.Model, MAC: n.MAC, Network: n.Network})
		}
		kv("displayName", vm.Name)
		kv("guestOS", vm.GuestOS)
		kv("nvram", vm.Name+".nvram")
		kv("extendedConfigFile", vm.Name+".vmxf")
		kv("uuid.bios", fmt.Sprintf("42 1d %02x 5e 7a 3c 11 8b-2f 90 c4 6e 1a %02x 33 07", vi, vi))
		kv("vc.uuid", fmt.Sprintf("50 1d %02x 9b 44 2e d1 0a-8c 3f 71 de 55 %02x 90 12", vi, vi))
		kv("sched.swap.derivedName", "/vmfs/volumes/ds/"+dir+"/"+vm.Name+"-d1e2f3a4.vswp")
		spec.Files = append(spec.Files, FileSpec{Path: p.m.VMX, Content: []byte(x.String())})

		// The .vmsd: ESXi leaves an empty one when there is no snapshot.
		var s strings.Builder
		if len(snaps) > 0 {
			fmt.Fprintf(&s, ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"%d\"\nsnapshot.current = \"%s\"\n", len(snaps), cur)
			fmt.Fprintf(&s, "snapshot.numSnapshots = \"%d\"\n", len(snaps))
			for i, sn := range snaps {
				k := fmt.Sprintf("snapshot%d", i)
				fmt.Fprintf(&s, "%s.uid = \"%s\"\n%s.filename = \"%s\"\n", k, sn.uid, k, path.Base(sn.vmsn))
				if sn.parent != "" {
					fmt.Fprintf(&s, "%s.parent = \"%s\"\n", k, sn.parent)
				}
				fmt.Fprintf(&s, "%s.displayName = \"%s\"\n%s.type = \"1\"\n", k, sn.name, k)
				fmt.Fprintf(&s, "%s.createTimeHigh = \"%d\"\n%s.createTimeLow = \"%d\"\n", k, 385000+i, k, -1194000000+i*1000)
				nodes := sortedNodes(sn.disks)
				fmt.Fprintf(&s, "%s.numDisks = \"%d\"\n", k, len(nodes))
				for j, node := range nodes {
					fmt.Fprintf(&s, "%s.disk%d.fileName = \"%s\"\n%s.disk%d.node = \"%s\"\n", k, j, path.Base(sn.disks[node]), k, j, node)
				}
				p.m.Snapshots = append(p.m.Snapshots, ManifestVMSnap{Name: sn.name, UID: sn.uid, Parent: sn.parent})
				spec.Files = append(spec.Files, FileSpec{Path: sn.vmsn, Size: 23000 + int64(i)*512, Seed: int64(vi*100 + 50 + i)})
			}
			p.m.CurrentSnapshot = cur
		}
		spec.Files = append(spec.Files, FileSpec{Path: dir + "/" + vm.Name + ".vmsd", Content: []byte(s.String())})
		nv := int64(8684)
		if fw == "efi" {
			nv = 270840
		}
		spec.Files = append(spec.Files,
			FileSpec{Path: dir + "/" + vm.Name + ".nvram", Size: nv, Seed: int64(vi*100 + 90)},
			FileSpec{Path: dir + "/" + vm.Name + ".vmxf", Content: []byte(fmt.Sprintf("<?xml version=\"1.0\"?>\n<Foundry>\n<VM>\n<VMId type=\"string\">52 %02x 1d 5e</VMId>\n<ClientMetaData>\n<clientMetaDataAttributes/>\n<HistoryEventList/></ClientMetaData>\n<vmxPathName type=\"string\">%s.vmx</vmxPathName></VM></Foundry>\n", vi, vm.Name))},
			FileSpec{Path: dir + "/vmware.log", Size: 180000, Seed: int64(vi*100 + 91)},
			FileSpec{Path: dir + "/vmware-1.log", Size: 240000, Seed: int64(vi*100 + 92)},
		)
		if vm.Running {
			// A swap file the size of memory, allocated but mostly
			// untouched (as a new .vswp is).
			spec.Files = append(spec.Files, FileSpec{Path: dir + "/" + vm.Name + "-d1e2f3a4.vswp", Size: int64(vm.MemoryMiB) << 20, Allocate: []int64{0}})
		}
		for _, d := range vm.Disks {
			bus, num, unit, _ := splitNode(d.Node)
			ct := d.ControllerType
			switch bus {
			case "sata":
				ct = "ahci"
			case "nvme", "ide":
				ct = bus
			}
			mode := d.Mode
			if mode == "" {
				mode = "persistent"
			}
			md := ManifestVMDisk{Controller: fmt.Sprintf("%s%d", bus, num), Bus: num, Unit: unit, ControllerType: ct,
				Path: p.current[d.Node], Datastore: d.Datastore, Chain: []string{}, VirtualSize: d.Size, Mode: mode,
				Snapshots: map[string]string{}}
			for _, sn := range snaps {
				if f, ok := sn.disks[d.Node]; ok {
					md.Snapshots[sn.name] = f
				}
			}
			p.m.Disks = append(p.m.Disks, md)
		}
		plans = append(plans, p)
	}
	return spec, plans, nil
}

func sortedNodes(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// vmManifests completes the VMs' manifests with the chains of the disks.
func vmManifests(plans []*vmPlan, m *Manifest) []ManifestVM {
	byPath := map[string]ManifestDisk{}
	for _, d := range m.Disks {
		byPath[d.Path] = d
	}
	var out []ManifestVM
	for _, p := range plans {
		vm := p.m
		for i, d := range vm.Disks {
			if d.Datastore == "" {
				vm.Disks[i].Chain = byPath[d.Path].Chain
			}
		}
		out = append(out, vm)
	}
	return out
}

// SampleVMs are three VMs as a datastore holds them: an EFI Windows server
// with Secure Boot on pvscsi, reverted to its first snapshot (so it runs on
// a new delta beside the longer branch); a BIOS Linux VM with SATA and NVMe
// disks and two NICs, one snapshot; and a powered-on IDE VM.
func SampleVMs() []VMSpec {
	return []VMSpec{
		{
			Name: "web01", GuestOS: "windows2019srv-64", Firmware: "efi", SecureBoot: true, CPUs: 4, CoresPerSocket: 2, MemoryMiB: 8192,
			Disks: []VMDiskSpec{
				{Node: "scsi0:0", ControllerType: "pvscsi", Type: Thin, Size: 32 << 20, Fill: 30},
				{Node: "scsi0:1", ControllerType: "pvscsi", Type: Eager, Size: 8 << 20, Fill: 50},
			},
			NICs: []VMNICSpec{{Model: "vmxnet3", MAC: "00:50:56:9a:10:01", Network: "VM Network"}},
			Ops:  []VMOp{{Snapshot: "before patch", Fill: 5}, {Snapshot: "patched", Fill: 3}, {Revert: "before patch", Fill: 2}},
		},
		{
			Name: "db01", GuestOS: "rhel8-64", CPUs: 2, MemoryMiB: 4096,
			Disks: []VMDiskSpec{
				{Node: "sata0:0", Type: Lazy, Size: 16 << 20, Fill: 40},
				{Node: "nvme0:0", Type: Thin, Size: 16 << 20, Fill: 20},
			},
			NICs: []VMNICSpec{
				{Model: "e1000e", MAC: "00:0c:29:ab:cd:01", Network: "Prod"},
				{Model: "vmxnet3", MAC: "00:50:56:00:00:42", Network: "Backup", Static: true},
			},
			Ops: []VMOp{{Snapshot: "nightly", Fill: 4}},
		},
		{
			Name: "legacy", GuestOS: "winXPPro", MemoryMiB: 512, Running: true,
			Disks: []VMDiskSpec{{Node: "ide0:0", Type: Thin, Size: 8 << 20, Fill: 60}},
			NICs:  []VMNICSpec{{Model: "e1000", MAC: "00:0c:29:11:22:33", Network: "VM Network"}},
		},
	}
}
