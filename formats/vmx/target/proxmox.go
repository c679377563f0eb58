package target

import (
	"fmt"
	"strings"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
)

// pveBusMax is how many disks Proxmox VE attaches per bus (ide0-3,
// sata0-5, scsi0-30, virtio0-15).
var pveBusMax = map[string]int{"ide": 4, "sata": 6, "scsi": 31, "virtio": 16}

// Proxmox returns a POSIX shell script of qm commands that creates the VM
// on a Proxmox VE node (7.2 or later: disks are imported with
// import-from; on older versions use `qm importdisk` and attach the
// resulting unused disk instead).
//
// Mapping: qm create with memory, sockets and cores, ostype from the
// guest OS, machine q35; for EFI --bios ovmf and an EFI disk with the
// distribution keys enrolled (pre-enrolled-keys=1: Secure Boot on) or not
// (0: off); disks in boot order, each imported into Options.Storage
// ("local-lvm") and attached on a bus the guest boots from without new
// drivers — SATA for Windows and unknown guests, SCSI with scsihw
// virtio-scsi-single for Linux (Options.DiskBus overrides); --boot
// order=… in the same order; NICs with their MAC on Options.Networks'
// bridge or Options.DefaultNetwork ("vmbr0"), model e1000e for Windows
// and unknown guests, virtio for Linux (Options.NICModel overrides).
//
// Refused: more disks than the bus takes, disk file names with a comma
// (Proxmox property strings cannot hold one), an unknown bus.
func Proxmox(vm *vmx.VM, disks []Disk, opts Options) (string, error) {
	name := vmName(vm, opts)
	refuse := func(format string, args ...any) (string, error) {
		return "", &RefusedError{Target: "proxmox", VM: name, Reason: fmt.Sprintf(format, args...)}
	}
	att, skipped, err := plan("proxmox", vm, disks, "qcow2", "raw", "vhd", "vhdx")
	if err != nil {
		return "", err
	}
	family := vm.GuestFamily()
	bus := strings.ToLower(opts.DiskBus)
	if bus == "" {
		bus = "sata"
		if family == "linux" {
			bus = "scsi"
		}
	}
	limit, ok := pveBusMax[bus]
	if !ok {
		return refuse("disk bus %q is not one of sata, scsi, virtio, ide", opts.DiskBus)
	}
	if len(att) > limit {
		return refuse("%d disks: the %s bus of Proxmox VE takes %d", len(att), bus, limit)
	}
	for _, d := range att {
		if strings.ContainsAny(d.File, ",=") {
			return refuse("disk file %q contains ',' or '=', which a Proxmox disk property cannot hold; rename it", d.File)
		}
	}
	if opts.VMID != 0 && opts.VMID < 100 {
		return refuse("VM ID %d: Proxmox VE IDs start at 100", opts.VMID)
	}
	nicModel := strings.ToLower(opts.NICModel)
	if nicModel == "" {
		nicModel = "e1000e"
		if family == "linux" {
			nicModel = "virtio"
		}
	}
	bridge := opts.DefaultNetwork
	if bridge == "" {
		bridge = "vmbr0"
	}
	pveName := dnsName(name)
	ostype := pveOSType(vm.GuestOS)

	var mapped, unmapped, needs []string
	var slots []string
	for i, d := range att {
		slot := fmt.Sprintf("%s%d", bus, i)
		slots = append(slots, slot)
		mapped = append(mapped, diskLine(i, d, slot+fmt.Sprintf(", boot order %d", i+1)))
	}
	for i, n := range vm.NICs {
		mapped = append(mapped, fmt.Sprintf("%s (%s, %s, network %q) -> net%d model %s on bridge %s, MAC %s", n.Name, orUnknown(n.Model), orUnknown(n.MAC), n.Network, i, nicModel, nicNetwork(n, opts, bridge), macOrAuto(n.MAC)))
	}
	fw := "SeaBIOS"
	if vm.Firmware == "efi" {
		fw = "OVMF with an EFI disk, Secure Boot " + map[bool]string{true: "on (pre-enrolled keys)", false: "off (no keys enrolled)"}[vm.SecureBoot]
	}
	mapped = append(mapped,
		fmt.Sprintf("memory %d MiB, %d socket(s) x %d core(s), ostype %s, machine q35", vm.MemoryMiB, vm.Sockets(), max(vm.CPUs/vm.Sockets(), 1), ostype),
		"firmware: "+fw)
	if pveName != name {
		unmapped = append(unmapped, fmt.Sprintf("name %q is not a DNS name, as Proxmox VE requires: %q is used", name, pveName))
	}
	dest := "the " + bus + " bus"
	if bus == "scsi" {
		dest += " (VirtIO SCSI single)"
	}
	unmapped = append(unmapped, controllerNotes(att, dest)...)
	unmapped = append(unmapped, nicNotes(vm, "model "+nicModel)...)
	unmapped = append(unmapped, commonUnmapped(vm, skipped)...)
	if bus == "virtio" || bus == "scsi" || nicModel == "virtio" {
		switch family {
		case "windows":
			needs = append(needs, "Windows has no virtio drivers: install virtio-win (vioscsi/viostor, NetKVM) before switching the disks or NICs to VirtIO")
		default:
			needs = append(needs, "virtio_scsi, virtio_blk, virtio_net and virtio_pci must be in the initramfs (a host-only initramfs built on VMware lacks them: rebuild it, e.g. dracut -f --add-drivers 'virtio_blk virtio_scsi virtio_net virtio_pci')")
		}
	}
	if family == "windows" {
		needs = append(needs, "install the virtio-win guest tools and the QEMU guest agent, then move to VirtIO disks and NICs for speed")
	}
	needs = append(needs, commonNeeds(vm)...)
	var h header
	intro(&h, "Proxmox VE (qm)", vm, pveName)
	h.section("Mapped", mapped)
	h.section("Not mapped or changed", unmapped)
	h.section("The guest may still need", needs)
	h.section("Problems found in the VMware files", vm.Problems)

	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	b.WriteString(h.render("# "))
	b.WriteString("\nset -eu\n")
	if opts.VMID != 0 {
		fmt.Fprintf(&b, "VMID=${VMID:-%d}\n", opts.VMID)
	} else {
		b.WriteString("VMID=${VMID:-$(pvesh get /cluster/nextid)}\n")
	}
	storage := opts.Storage
	if storage == "" {
		storage = "local-lvm"
	}
	fmt.Fprintf(&b, "STORAGE=${STORAGE:-%s}\n", shQuote(storage))
	b.WriteString("# Folder of the converted disks named by relative paths below.\n")
	b.WriteString("DIR=${DIR:-$(cd \"$(dirname \"$0\")\" && pwd)}\n\n")
	fmt.Fprintf(&b, "qm create \"$VMID\" --name %s --ostype %s --machine q35 --memory %d --sockets %d --cores %d",
		shQuote(pveName), ostype, vm.MemoryMiB, vm.Sockets(), max(vm.CPUs/vm.Sockets(), 1))
	if bus == "scsi" {
		b.WriteString(" --scsihw virtio-scsi-single")
	}
	if vm.Firmware == "efi" {
		fmt.Fprintf(&b, " --bios ovmf --efidisk0 \"$STORAGE:1,efitype=4m,pre-enrolled-keys=%d\"", map[bool]int{true: 1, false: 0}[vm.SecureBoot])
	} else {
		b.WriteString(" --bios seabios")
	}
	b.WriteString("\n\n# Disks, in boot order.\n")
	for i, d := range att {
		dir := "$DIR/"
		if isAbs(d.File) {
			dir = ""
		}
		fmt.Fprintf(&b, "# %s\n", clean(diskLine(i, d, slots[i])))
		fmt.Fprintf(&b, "qm set \"$VMID\" --%s \"$STORAGE:0,import-from=%s\"%s\n", slots[i], dir, shQuote(d.File))
	}
	fmt.Fprintf(&b, "qm set \"$VMID\" --boot 'order=%s'\n", strings.Join(slots, ";"))
	if len(vm.NICs) > 0 {
		b.WriteString("\n# Network adapters.\n")
	}
	for i, n := range vm.NICs {
		v := fmt.Sprintf("model=%s,bridge=%s", nicModel, nicNetwork(n, opts, bridge))
		if n.MAC != "" {
			v += ",macaddr=" + strings.ToUpper(n.MAC)
		}
		fmt.Fprintf(&b, "qm set \"$VMID\" --net%d %s\n", i, shQuote(v))
	}
	b.WriteString("\necho \"$VMID\"\n")
	return b.String(), nil
}

// dnsName makes s a DNS name as Proxmox VE wants VM names: letters,
// digits, '-' and '.', not starting or ending with '-'.
func dnsName(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-.")
	for strings.Contains(out, "--") {
		out = strings.ReplaceAll(out, "--", "-")
	}
	if out == "" {
		return "vm"
	}
	return out
}

// pveOSType maps a VMware guestOS to Proxmox's ostype.
func pveOSType(guestOS string) string {
	g := strings.ToLower(guestOS)
	switch vmx.GuestFamily(guestOS) {
	case "linux":
		if strings.Contains(g, "24") && !strings.Contains(g, "26") || strings.Contains(g, "22x") {
			return "l24"
		}
		return "l26"
	case "windows":
		switch {
		case strings.Contains(g, "windows11"), strings.Contains(g, "windows12"), strings.Contains(g, "2022"), strings.Contains(g, "2019srvnext"):
			return "win11"
		case strings.Contains(g, "windows9"), strings.Contains(g, "2016"), strings.Contains(g, "2019"):
			return "win10"
		case strings.Contains(g, "windows8"):
			return "win8"
		case strings.Contains(g, "windows7"):
			return "win7"
		case strings.Contains(g, "longhorn"), strings.Contains(g, "vista"):
			return "w2k8"
		case strings.Contains(g, "winnet"):
			return "w2k3"
		case strings.Contains(g, "xp"):
			return "wxp"
		case strings.Contains(g, "win2000"):
			return "w2k"
		}
		return "win10"
	}
	if strings.HasPrefix(g, "solaris") {
		return "solaris"
	}
	return "other"
}
