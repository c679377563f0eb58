package vmx

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// VM is a virtual machine as its .vmx (and the .vmsd beside it) describe
// it. Build and Load fill it; nothing in it refers to VMFS.
type VM struct {
	Name           string // displayName; the .vmx file name without extension when absent
	VMXPath        string // slash path of the .vmx in the FS it was loaded from
	GuestOS        string // guestOS as written, e.g. "windows9-64", "ubuntu-64"
	Firmware       string // "bios" (also when firmware is absent) or "efi"
	SecureBoot     bool   // uefi.secureBoot.enabled (only with Firmware "efi")
	CPUs           int    // numvcpus (default 1)
	CoresPerSocket int    // cpuid.coresPerSocket (default 1); sockets = CPUs / CoresPerSocket
	MemoryMiB      int64  // memSize (default 32, as VMware)
	HWVersion      int    // virtualHW.version, 0 when absent

	Controllers []Controller // present controllers, by bus (ide, sata, scsi, nvme) then number
	// Disks are the hard disks of the present devices, in boot order: the
	// first is the one the VM boots from (see BootOrder).
	Disks  []Disk
	CDROMs []CDROM
	NICs   []NIC // by ethernetN number
	// BootOrder is bios.bootOrder split at commas, lower case ("hdd",
	// "cdrom", "floppy", "ethernet0"); nil when absent.
	BootOrder []string
	// HDDOrder is bios.hddOrder split at commas, lower case ("scsi0:0").
	HDDOrder []string
	// Unmapped names present devices this model does not describe and no
	// target receives: "usb", "usb_xhci", "sound", "serial0", "floppy0",
	// "pciPassthru0", "vtpm", …
	Unmapped []string

	Snapshots       []Snapshot // from the .vmsd, in file order
	CurrentSnapshot string     // UID of the snapshot the VM runs on ("" without snapshots)

	// Problems lists what the files say that a migration must look at:
	// values that could not be read, devices skipped, disks not found,
	// guesses made. Each names the file and, where there is one, the line.
	Problems []string
}

// Controller is a present storage controller.
type Controller struct {
	Name   string // "scsi0", "sata1", "nvme0", "ide0"
	Bus    string // "scsi", "sata", "nvme", "ide"
	Number int    // 0 in scsi0
	// Type is the emulated model: lsilogic, lsisas1068, pvscsi, buslogic
	// (SCSI, from virtualDev; buslogic when virtualDev is absent, as
	// VMware does), ahci (SATA), nvme, ide.
	Type string
	// SharedBus is scsiN.sharedBus when not "none" ("virtual",
	// "physical": a cluster disk setup).
	SharedBus string
}

// Disk is a virtual hard disk attached to the VM.
type Disk struct {
	Node           string // "scsi0:1"
	Controller     string // "scsi0"
	Bus            string // "scsi", "sata", "nvme", "ide"
	ControllerType string // Controller.Type: lsilogic, pvscsi, ahci, nvme, ide, …
	Number         int    // controller number: 0 in scsi0:1
	Unit           int    // unit on the controller: 1 in scsi0:1
	// FileName is the descriptor as the .vmx names it (decoded to UTF-8).
	FileName string
	// Datastore is set when FileName is /vmfs/volumes/<Datastore>/…: the
	// volume name or UUID of another datastore (or of the VMX's own: the
	// caller, who knows the datastore's name and UUID, decides). Path is
	// then the path within that datastore.
	Datastore string
	// Path is the slash path of the descriptor: within Datastore when that
	// is set, else within the FS holding the .vmx, resolved against the
	// .vmx's folder. "" when it cannot be resolved (a relative path that
	// leaves the FS root).
	Path string
	// HostPath is FileName when it is an absolute path of a hosted product
	// (Workstation on Windows "C:\VMs\x.vmdk", Fusion "/Users/…/x.vmdk");
	// Path is then the file's base name in the .vmx's folder, where Load
	// looks for it.
	HostPath string
	// Mode is persistent (the default), independent-persistent,
	// independent-nonpersistent, nonpersistent or undoable.
	Mode string
	// DeviceType is the deviceType as written, lower case ("scsi-harddisk",
	// "ata-harddisk", "disk", "rawdisk"); "" when absent.
	DeviceType string
	// Raw is set for deviceType rawDisk (a host's physical disk on
	// Workstation): there is no file data to convert.
	Raw bool
}

// CDROM is a present CD/DVD drive.
type CDROM struct {
	Node       string // "sata0:0", "ide1:0"
	Bus        string
	DeviceType string // cdrom-image, atapi-cdrom, cdrom-raw
	FileName   string // ISO image or host device, as written
	// StartConnected is startConnected (default true).
	StartConnected bool
}

// NIC is a present network adapter.
type NIC struct {
	Name string // "ethernet0"
	// Model is virtualDev: e1000, e1000e, vmxnet3, vmxnet, vlance. When
	// absent it is "" and a problem says so (VMware picks by guest OS).
	Model string
	// MAC is the address in lower case with colons ("00:50:56:aa:bb:cc");
	// "" when the VM was never powered on (a generated address does not
	// exist yet).
	MAC string
	// AddressType is generated (the default), static or vpx.
	AddressType string
	// Network is networkName (ESXi port group); for hosted products
	// without one, the connectionType (bridged, nat, hostonly, custom),
	// or vnet for custom.
	Network string
	// ConnectionType is connectionType as written (hosted products), "".
	ConnectionType string
	StartConnected bool
}

// GuestFamily returns "windows", "linux" or "other" for GuestOS, from
// the guest identifiers VMware documents (windows9-64, winXPPro,
// longhorn-64, ubuntu-64, rhel8-64, other5xlinux-64, freebsd-64, …).
func (vm *VM) GuestFamily() string { return GuestFamily(vm.GuestOS) }

// GuestFamily classifies a VMware guestOS identifier: "windows", "linux"
// or "other".
func GuestFamily(guestOS string) string {
	g := strings.ToLower(guestOS)
	switch {
	case strings.HasPrefix(g, "win"), strings.HasPrefix(g, "longhorn"):
		return "windows"
	case strings.Contains(g, "linux"):
		return "linux"
	}
	for _, p := range []string{"rhel", "centos", "ubuntu", "debian", "sles", "suse", "opensuse", "fedora", "oracle", "redhat", "mandrake", "mandriva", "turbolinux", "asianux", "coreos", "vmware-photon", "amazonlinux", "almalinux", "rockylinux", "miraclelinux", "pardus", "prolinux", "kylinux", "fusionos", "crxpod", "crxsys"} {
		if strings.HasPrefix(g, p) {
			return "linux"
		}
	}
	return "other"
}

// Is64Bit reports whether guestOS names a 64-bit guest (VMware's
// identifiers end in "-64").
func Is64Bit(guestOS string) bool { return strings.HasSuffix(strings.ToLower(guestOS), "-64") }

// Sockets returns CPUs / CoresPerSocket (at least 1).
func (vm *VM) Sockets() int {
	if vm.CoresPerSocket <= 0 || vm.CPUs%vm.CoresPerSocket != 0 {
		return max(vm.CPUs, 1)
	}
	return max(vm.CPUs/vm.CoresPerSocket, 1)
}

// Snapshot returns the snapshot with the given UID.
func (vm *VM) Snapshot(uid string) (*Snapshot, bool) {
	for i := range vm.Snapshots {
		if vm.Snapshots[i].UID == uid {
			return &vm.Snapshots[i], true
		}
	}
	return nil, false
}

// Disk returns the disk at node ("scsi0:0"), matched case-insensitively.
func (vm *VM) Disk(node string) (*Disk, bool) {
	for i := range vm.Disks {
		if strings.EqualFold(vm.Disks[i].Node, node) {
			return &vm.Disks[i], true
		}
	}
	return nil, false
}

// busOrder is the default boot order of controller kinds; see bootSort.
var busOrder = map[string]int{"ide": 0, "scsi": 1, "sata": 2, "nvme": 3}

// maxNumber bounds controller numbers and units read from keys, so a
// corrupt file cannot make us build huge tables; VMware's limits are
// ide 0-1:0-1, sata 0-3:0-29, scsi 0-3:0-64, nvme 0-3:0-63.
const (
	maxController = 3
	maxUnit       = 64
	maxEthernet   = 99
)

var (
	reController = regexp.MustCompile(`^(scsi|sata|nvme|ide)([0-9]+)\.`)
	reDevice     = regexp.MustCompile(`^(scsi|sata|nvme|ide)([0-9]+):([0-9]+)\.`)
	reEthernet   = regexp.MustCompile(`^ethernet([0-9]+)\.`)
	reOther      = regexp.MustCompile(`^(serial|parallel|floppy|pcipassthru|sound|usb|ehci|usb_xhci|vtpm|sharedfolder)([0-9]*)\.present$`)
)

// Build makes a VM from a parsed .vmx and, when not nil, the .vmsd beside
// it. vmxPath is the slash path of the .vmx in its FS; disk paths are
// resolved against its folder. Build does not touch any file: values it
// cannot read become Problems, never errors.
func Build(vmxPath string, vmx, vmsd *File) *VM {
	vm := &VM{VMXPath: vmxPath, Firmware: "bios", CPUs: 1, CoresPerSocket: 1, MemoryMiB: 32}
	b := builder{vm: vm, f: vmx}
	vm.Name = vmx.Value("displayName")
	if vm.Name == "" {
		vm.Name = strings.TrimSuffix(path.Base(vmxPath), path.Ext(vmxPath))
	}
	vm.GuestOS = vmx.Value("guestOS")
	if vm.GuestOS == "" {
		b.problem("guestOS", "guestOS is absent; the guest family is unknown")
	}
	switch fw := strings.ToLower(vmx.Value("firmware")); fw {
	case "", "bios":
	case "efi":
		vm.Firmware = "efi"
	default:
		b.problem("firmware", "firmware %q is not bios or efi; bios assumed", fw)
	}
	if vm.Firmware == "efi" {
		vm.SecureBoot = b.boolean("uefi.secureBoot.enabled", false)
	}
	vm.CPUs = int(b.integer("numvcpus", 1, 1, 768))
	vm.CoresPerSocket = int(b.integer("cpuid.coresPerSocket", 1, 1, 768))
	if vm.CPUs%vm.CoresPerSocket != 0 {
		b.problem("cpuid.coresPerSocket", "%d vCPUs are not a multiple of %d cores per socket; one core per socket assumed", vm.CPUs, vm.CoresPerSocket)
		vm.CoresPerSocket = 1
	}
	if _, ok := vmx.Get("memSize"); !ok {
		b.problem("memSize", "memSize is absent; VMware's default of 32 MiB assumed")
	}
	vm.MemoryMiB = b.integer("memSize", 32, 1, 24<<20)
	vm.HWVersion = int(b.integer("virtualHW.version", 0, 0, 1000))
	vm.BootOrder = splitList(vmx.Value("bios.bootOrder"))
	vm.HDDOrder = splitList(vmx.Value("bios.hddOrder"))

	b.controllers()
	b.devices()
	b.nics()
	b.unmapped()
	bootSort(vm)
	if vmsd != nil {
		b.snapshots(vmsd)
	}
	return vm
}

type builder struct {
	vm *VM
	f  *File
}

func (b *builder) problem(key, format string, args ...any) {
	b.vm.Problems = append(b.vm.Problems, b.f.where(key)+": "+fmt.Sprintf(format, args...))
}

// boolean reads a VMware boolean: TRUE/FALSE in any case (also yes/no,
// 1/0, on/off, which VMware accepts).
func (b *builder) boolean(key string, def bool) bool {
	v, ok := b.f.Get(key)
	if !ok {
		return def
	}
	if r, ok := parseBool(v); ok {
		return r
	}
	b.problem(key, "%s = %q is not TRUE or FALSE; %v assumed", key, v, def)
	return def
}

func parseBool(v string) (bool, bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "yes", "1", "on", "t", "y":
		return true, true
	case "false", "no", "0", "off", "f", "n":
		return false, true
	}
	return false, false
}

// integer reads a decimal value in [lo, hi]; def when absent or invalid.
func (b *builder) integer(key string, def, lo, hi int64) int64 {
	v, ok := b.f.Get(key)
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < lo || n > hi {
		b.problem(key, "%s = %q is not a number in [%d, %d]; %d assumed", key, v, lo, hi, def)
		return def
	}
	return n
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.ToLower(strings.TrimSpace(s)); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// controllers finds the present controllers. VMware reads an absent
// scsiN/sataN/nvmeN.present as FALSE: the controller does not exist (the
// vSphere and hosted writers always write TRUE for one that does; libvirt's
// VMX reader, written against ESX, uses the same default). The two IDE
// channels belong to the virtual chipset and exist without any key (no
// product writes ide0.present), so ideN is present unless ideN.present is
// explicitly FALSE.
func (b *builder) controllers() {
	found := map[string]bool{}
	for _, k := range b.f.Keys() {
		m := reController.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		found[m[1]+m[2]] = true
	}
	for _, n := range []string{"ide0", "ide1"} {
		found[n] = true
	}
	var names []string
	for n := range found {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		bus := strings.TrimRight(name, "0123456789")
		num, _ := strconv.Atoi(name[len(bus):])
		limit := maxController
		if bus == "ide" {
			limit = 1
		}
		if num > limit {
			b.problem(name+".present", "controller %s is beyond VMware's limit (%s0-%d); ignored", name, bus, limit)
			continue
		}
		present := bus == "ide"
		present = b.boolean(name+".present", present)
		if !present {
			continue
		}
		c := Controller{Name: name, Bus: bus, Number: num}
		switch bus {
		case "ide":
			c.Type = "ide"
		case "sata":
			c.Type = "ahci"
		case "nvme":
			c.Type = "nvme"
		case "scsi":
			c.Type = strings.ToLower(b.f.Value(name + ".virtualDev"))
			switch c.Type {
			case "lsilogic", "lsisas1068", "pvscsi", "buslogic":
			case "":
				c.Type = "buslogic"
				b.problem(name+".present", "%s.virtualDev is absent; buslogic assumed (VMware's default)", name)
			default:
				b.problem(name+".virtualDev", "%s.virtualDev %q is not a known SCSI controller", name, c.Type)
			}
			if sb := strings.ToLower(b.f.Value(name + ".sharedBus")); sb != "" && sb != "none" {
				c.SharedBus = sb
				b.problem(name+".sharedBus", "%s shares its bus (%s): its disks are cluster disks shared with other VMs", name, sb)
			}
		}
		b.vm.Controllers = append(b.vm.Controllers, c)
	}
	slices.SortFunc(b.vm.Controllers, func(x, y Controller) int {
		if d := busOrder[x.Bus] - busOrder[y.Bus]; d != 0 {
			return d
		}
		return x.Number - y.Number
	})
}

func (b *builder) controller(name string) (Controller, bool) {
	for _, c := range b.vm.Controllers {
		if c.Name == name {
			return c, true
		}
	}
	return Controller{}, false
}

// devices reads the disks and CD-ROMs: every node N:M with a key, present
// only when N:M.present is TRUE (absent = FALSE, as VMware reads it).
func (b *builder) devices() {
	type node struct {
		bus       string
		num, unit int
	}
	seen := map[node]bool{}
	var nodes []node
	for _, k := range b.f.Keys() {
		m := reDevice.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		num, err1 := strconv.Atoi(m[2])
		unit, err2 := strconv.Atoi(m[3])
		if err1 != nil || err2 != nil || num > maxController || unit > maxUnit {
			continue
		}
		n := node{m[1], num, unit}
		if !seen[n] {
			seen[n] = true
			nodes = append(nodes, n)
		}
	}
	for _, n := range nodes {
		ctl := fmt.Sprintf("%s%d", n.bus, n.num)
		id := fmt.Sprintf("%s:%d", ctl, n.unit)
		if !b.boolean(id+".present", false) {
			continue
		}
		c, ok := b.controller(ctl)
		if !ok {
			b.problem(id+".present", "%s is present but its controller %s is not; skipped", id, ctl)
			continue
		}
		file := b.f.Value(id + ".fileName")
		dt := strings.ToLower(b.f.Value(id + ".deviceType"))
		kind := deviceKind(dt, file)
		switch kind {
		case "cdrom":
			b.vm.CDROMs = append(b.vm.CDROMs, CDROM{Node: id, Bus: n.bus, DeviceType: dt, FileName: file,
				StartConnected: b.boolean(id+".startConnected", true)})
		case "disk":
			if file == "" {
				b.problem(id+".present", "disk %s has no fileName; skipped", id)
				continue
			}
			d := Disk{Node: id, Controller: ctl, Bus: n.bus, ControllerType: c.Type, Number: n.num, Unit: n.unit,
				FileName: file, DeviceType: dt, Raw: dt == "rawdisk"}
			d.Datastore, d.Path, d.HostPath = ResolvePath(path.Dir(b.vm.VMXPath), file)
			if d.Path == "" {
				b.problem(id+".fileName", "disk %s: %q leaves the datastore; it cannot be found", id, file)
			}
			d.Mode = strings.ToLower(b.f.Value(id + ".mode"))
			switch d.Mode {
			case "":
				d.Mode = "persistent"
			case "persistent", "independent-persistent":
			case "independent-nonpersistent", "nonpersistent", "undoable", "append":
				b.problem(id+".mode", "disk %s is %s: changes made while the VM runs are discarded or kept in a redo log; the disk as the VM sees it after a power-off is converted", id, d.Mode)
			default:
				b.problem(id+".mode", "disk %s: unknown mode %q", id, d.Mode)
			}
			if d.Raw {
				b.problem(id+".deviceType", "disk %s is a raw host disk (rawDisk): its data is not in a file and cannot be converted", id)
			}
			b.vm.Disks = append(b.vm.Disks, d)
		default:
			b.vm.Unmapped = append(b.vm.Unmapped, id+" ("+dt+")")
			b.problem(id+".deviceType", "%s: device type %q is neither a disk nor a CD-ROM; not mapped", id, dt)
		}
	}
}

// deviceKind classifies a deviceType: "disk", "cdrom" or "" (other: a
// generic SCSI pass-through, a tape).
func deviceKind(dt, file string) string {
	switch dt {
	case "disk", "scsi-harddisk", "ata-harddisk", "sata-harddisk", "nvme-harddisk", "plaindisk", "rawdisk":
		return "disk"
	case "cdrom-image", "atapi-cdrom", "cdrom-raw", "cdrom":
		return "cdrom"
	case "":
		if strings.HasSuffix(strings.ToLower(file), ".iso") {
			return "cdrom"
		}
		return "disk"
	}
	return ""
}

// nics reads ethernetN: present when ethernetN.present is TRUE.
func (b *builder) nics() {
	seen := map[int]bool{}
	var nums []int
	for _, k := range b.f.Keys() {
		m := reEthernet.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		n, err := strconv.Atoi(m[1])
		if err != nil || n > maxEthernet || seen[n] {
			continue
		}
		seen[n] = true
		nums = append(nums, n)
	}
	slices.Sort(nums)
	for _, n := range nums {
		name := fmt.Sprintf("ethernet%d", n)
		if !b.boolean(name+".present", false) {
			continue
		}
		nic := NIC{Name: name, StartConnected: b.boolean(name+".startConnected", true)}
		nic.Model = strings.ToLower(b.f.Value(name + ".virtualDev"))
		switch nic.Model {
		case "e1000", "e1000e", "vmxnet3", "vmxnet", "vmxnet2", "vlance":
		case "":
			b.problem(name+".present", "%s.virtualDev is absent: VMware picks the adapter by guest OS (vlance or e1000)", name)
		default:
			b.problem(name+".virtualDev", "%s: unknown adapter model %q", name, nic.Model)
		}
		nic.AddressType = strings.ToLower(b.f.Value(name + ".addressType"))
		if nic.AddressType == "" {
			nic.AddressType = "generated"
		}
		key := name + ".generatedAddress"
		if nic.AddressType == "static" {
			key = name + ".address"
		}
		raw := b.f.Value(key)
		if raw == "" && nic.AddressType == "static" {
			key = name + ".generatedAddress"
			raw = b.f.Value(key)
		}
		if raw == "" {
			b.problem(name+".present", "%s has no MAC address yet (%s is absent; the VM was never powered on): the target will generate one", name, key)
		} else if mac, ok := NormalizeMAC(raw); ok {
			nic.MAC = mac
		} else {
			b.problem(key, "%s = %q is not a MAC address", key, raw)
		}
		nic.ConnectionType = strings.ToLower(b.f.Value(name + ".connectionType"))
		nic.Network = b.f.Value(name + ".networkName")
		if nic.Network == "" {
			nic.Network = nic.ConnectionType
			if nic.ConnectionType == "custom" {
				nic.Network = b.f.Value(name + ".vnet")
			}
		}
		b.vm.NICs = append(b.vm.NICs, nic)
	}
}

// NormalizeMAC returns a MAC address in lower case with colons; it
// accepts colons, dashes or no separators.
func NormalizeMAC(s string) (string, bool) {
	h := strings.NewReplacer(":", "", "-", "", ".", "", " ", "").Replace(strings.TrimSpace(s))
	if len(h) != 12 {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < 12; i += 2 {
		if _, ok := unhex(h[i]); !ok {
			return "", false
		}
		if _, ok := unhex(h[i+1]); !ok {
			return "", false
		}
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(strings.ToLower(h[i : i+2]))
	}
	return b.String(), true
}

// unmapped lists present devices no target receives. Only an explicit
// TRUE counts (floppy0.present defaults to TRUE in old hosted products,
// but ESXi and current hosted products always write it).
func (b *builder) unmapped() {
	for _, k := range b.f.Keys() {
		m := reOther.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		e := b.f.entries[k]
		if v, ok := parseBool(e.Value); ok && v && len(e.Key) > len(".present") {
			b.vm.Unmapped = append(b.vm.Unmapped, e.Key[:len(e.Key)-len(".present")])
		}
	}
	slices.Sort(b.vm.Unmapped)
}

// bootSort orders vm.Disks as the VM boots them.
//
// bios.hddOrder (ESXi 4.1 and later, VMware KB 2011654) lists disks by
// node in the order the firmware tries them; the listed disks come first,
// in that order. The rest follow in the order VMware's BIOS presents hard
// disks when nothing is configured: disks on the chipset's IDE channels
// first (ide0:0, ide0:1, ide1:0, ide1:1, the legacy BIOS drive order),
// then SCSI, SATA and NVMe controllers by number and unit. Between the
// add-in controllers the order is our choice (VMware documents none); it
// matters only for VMs with disks on more than one kind of controller and
// no hddOrder, and Build adds a problem in that case. For EFI VMs the real
// order lives in the VM's NVRAM file, which is not read: the same rule is
// used and the same problem raised.
func bootSort(vm *VM) {
	rank := map[string]int{}
	for i, n := range vm.HDDOrder {
		if _, ok := rank[n]; !ok {
			rank[n] = i
		}
	}
	slices.SortStableFunc(vm.Disks, func(x, y Disk) int {
		rx, okx := rank[strings.ToLower(x.Node)]
		ry, oky := rank[strings.ToLower(y.Node)]
		switch {
		case okx && oky:
			return rx - ry
		case okx:
			return -1
		case oky:
			return 1
		}
		if d := busOrder[x.Bus] - busOrder[y.Bus]; d != 0 {
			return d
		}
		if x.Number != y.Number {
			return x.Number - y.Number
		}
		return x.Unit - y.Unit
	})
	if len(vm.Disks) == 0 {
		return
	}
	if _, ok := rank[strings.ToLower(vm.Disks[0].Node)]; ok {
		return
	}
	buses := map[string]bool{}
	for _, d := range vm.Disks {
		buses[d.Bus] = true
	}
	if len(buses) > 1 {
		where := vm.VMXPath
		vm.Problems = append(vm.Problems, fmt.Sprintf("%s: disks on %d kinds of controller and no bios.hddOrder: %s is taken as the boot disk (IDE, then SCSI, SATA, NVMe); check it", where, len(buses), vm.Disks[0].Node))
	}
}

// ResolvePath resolves a disk file name written in a .vmx (or .vmsd) whose
// folder is dir (a slash path in its FS):
//
//   - "/vmfs/volumes/<volume>/dir/x.vmdk" → datastore <volume>, path
//     "dir/x.vmdk";
//   - a Windows path ("C:\VMs\x\x.vmdk", "\\server\share\x.vmdk") or
//     another absolute path ("/Users/…/x.vmdk", "/home/…/x.vmdk") →
//     hostPath as written, path = its base name in dir;
//   - a relative name ("x.vmdk", "..\other\x.vmdk") → dir joined with it,
//     backslashes read as separators; "" when the result leaves the root.
func ResolvePath(dir, name string) (datastore, p, hostPath string) {
	n := name
	windows := strings.Contains(n, `\`) || (len(n) >= 2 && n[1] == ':' && isLetter(n[0]))
	if windows {
		n = strings.ReplaceAll(n, `\`, "/")
	}
	switch {
	case strings.HasPrefix(n, "/vmfs/volumes/"):
		v, sub, _ := strings.Cut(strings.TrimPrefix(n, "/vmfs/volumes/"), "/")
		return v, cleanRel(sub), ""
	case len(n) >= 2 && n[1] == ':' && isLetter(n[0]), strings.HasPrefix(n, "/"):
		return "", cleanRel(path.Join(dir, path.Base(n))), name
	}
	return "", cleanRel(path.Join(dir, n)), ""
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// cleanRel cleans a slash path relative to an FS root; "" when it leaves
// the root.
func cleanRel(p string) string {
	p = path.Clean(strings.TrimPrefix(p, "/"))
	if p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return ""
	}
	return p
}
