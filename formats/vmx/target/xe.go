package target

import (
	"fmt"
	"strings"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
)

// xeMaxVIFs is XenServer's documented limit of virtual NICs per VM.
const xeMaxVIFs = 7

// Xe returns a POSIX shell script of xe commands that creates the VM on a
// XenServer / Citrix Hypervisor / XCP-ng pool. It is meant to run in the
// pool master's dom0, where xe needs no credentials; the disk files must be
// readable there. SR, DIR, NAME and NETn can be set in the environment.
//
// Mapping: vm-install from the "Other install media" template (any disk
// it provisions is destroyed); memory limits all set to MemoryMiB (static
// memory, as on VMware); VCPUs-max and VCPUs-at-startup, cores per socket
// as platform:cores-per-socket; HVM-boot-params:firmware=uefi or bios and
// platform:secureboot; for each disk in boot order a vdi-create of its
// size on the SR, vdi-import of the file (format vhd or raw) and a
// vbd-create with userdevice 0, 1, 2, 4, 5 … (3 is left to the CD drive
// of HVM guests), the first bootable; for each NIC a vif-create on the
// network with the same name-label (or Options.Networks) with its MAC.
//
// Refused: formats other than VHD and raw, disks over 2040 GiB (the VDI
// limit of VHD-based storage repositories), more than 7 NICs.
func Xe(vm *vmx.VM, disks []Disk, opts Options) (string, error) {
	name := vmName(vm, opts)
	refuse := func(format string, args ...any) (string, error) {
		return "", &RefusedError{Target: "xe", VM: name, Reason: fmt.Sprintf(format, args...)}
	}
	att, skipped, err := plan("xe", vm, disks, "vhd", "raw")
	if err != nil {
		return "", err
	}
	for _, d := range att {
		if d.Size > vhdMax {
			return refuse("disk %s (%s) is %s: XenServer VDIs on VHD-based storage hold at most 2040 GiB", d.Node, d.File, humanSize(d.Size))
		}
	}
	if len(vm.NICs) > xeMaxVIFs {
		return refuse("%d network adapters: XenServer allows %d per VM", len(vm.NICs), xeMaxVIFs)
	}
	devs := make([]int, len(att))
	for i, n := 0, 0; i < len(att); i++ {
		if n == 3 {
			n++
		}
		devs[i] = n
		n++
	}
	mem := vm.MemoryMiB << 20

	var h header
	intro(&h, "XenServer / XCP-ng (xe)", vm, name)
	var mapped, unmapped, needs []string
	for i, d := range att {
		dest := fmt.Sprintf("VBD userdevice %d", devs[i])
		if i == 0 {
			dest += ", bootable"
		}
		mapped = append(mapped, diskLine(i, d, dest))
	}
	for i, n := range vm.NICs {
		mapped = append(mapped, fmt.Sprintf("%s (%s, %s, network %q) -> VIF %d on network %q, MAC %s", n.Name, orUnknown(n.Model), orUnknown(n.MAC), n.Network, i, nicNetwork(n, opts, ""), macOrAuto(n.MAC)))
	}
	fw := "bios"
	if vm.Firmware == "efi" {
		fw = "uefi"
	}
	mapped = append(mapped,
		fmt.Sprintf("memory: %d MiB (static-min = dynamic-min = dynamic-max = static-max)", vm.MemoryMiB),
		fmt.Sprintf("vCPUs: %d, %d core(s) per socket", vm.CPUs, vm.CoresPerSocket),
		"firmware: HVM-boot-params:firmware="+fw+map[bool]string{true: fmt.Sprintf(", platform:secureboot=%v", vm.SecureBoot)}[vm.Firmware == "efi"])
	unmapped = append(unmapped, controllerNotes(att, "Xen's emulated IDE for userdevice 0-3 until the PV drivers load, then PV block devices")...)
	unmapped = append(unmapped, nicNotes(vm, "an emulated RTL8139 until the PV drivers load, then a PV network device")...)
	unmapped = append(unmapped, commonUnmapped(vm, skipped)...)
	if vm.Firmware == "efi" {
		needs = append(needs, "UEFI guests need Citrix Hypervisor 8.2 / XCP-ng 8.2 or later")
		if vm.SecureBoot {
			needs = append(needs, "Secure Boot needs the pool's UEFI certificates installed (XCP-ng: secureboot-certs install)")
		}
	}
	switch vm.GuestFamily() {
	case "windows":
		needs = append(needs, "Windows: install the XenServer VM Tools / XCP-ng Windows PV drivers; without them only the first disks (emulated IDE) and the emulated NIC are seen")
	case "linux":
		needs = append(needs, "Linux: xen-blkfront and xen-netfront (in the kernel) must be in the initramfs; install xe-guest-utilities")
	default:
		needs = append(needs, "the guest sees emulated IDE disks and an emulated NIC until Xen PV drivers are installed")
	}
	needs = append(needs, commonNeeds(vm)...)
	h.section("Mapped", mapped)
	h.section("Not mapped or changed", unmapped)
	h.section("The guest may still need", needs)
	h.section("Problems found in the VMware files", vm.Problems)

	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	b.WriteString(h.render("# "))
	b.WriteString("\nset -eu\n")
	fmt.Fprintf(&b, "NAME=${NAME:-%s}\n", shQuote(name))
	b.WriteString("# Storage repository for the disks: the pool's default unless SR is set.\n")
	b.WriteString("SR=${SR:-$(xe pool-list params=default-SR --minimal)}\n")
	b.WriteString("# Folder of the converted disks named by relative paths below.\n")
	b.WriteString("DIR=${DIR:-$(cd \"$(dirname \"$0\")\" && pwd)}\n\n")
	b.WriteString("VM=$(xe vm-install template='Other install media' new-name-label=\"$NAME\" sr-uuid=\"$SR\")\n")
	b.WriteString("for vbd in $(xe vbd-list vm-uuid=\"$VM\" type=Disk params=uuid --minimal | tr ',' ' '); do\n")
	b.WriteString("\tvdi=$(xe vbd-param-get uuid=\"$vbd\" param-name=vdi-uuid)\n")
	b.WriteString("\txe vbd-destroy uuid=\"$vbd\"\n")
	b.WriteString("\txe vdi-destroy uuid=\"$vdi\"\n")
	b.WriteString("done\n")
	fmt.Fprintf(&b, "xe vm-memory-limits-set uuid=\"$VM\" static-min=%d dynamic-min=%d dynamic-max=%d static-max=%d\n", mem, mem, mem, mem)
	fmt.Fprintf(&b, "xe vm-param-set uuid=\"$VM\" VCPUs-max=%d\n", vm.CPUs)
	fmt.Fprintf(&b, "xe vm-param-set uuid=\"$VM\" VCPUs-at-startup=%d\n", vm.CPUs)
	fmt.Fprintf(&b, "xe vm-param-set uuid=\"$VM\" platform:cores-per-socket=%d\n", vm.CoresPerSocket)
	fmt.Fprintf(&b, "xe vm-param-set uuid=\"$VM\" HVM-boot-params:firmware=%s\n", fw)
	if vm.Firmware == "efi" {
		fmt.Fprintf(&b, "xe vm-param-set uuid=\"$VM\" platform:secureboot=%v\n", vm.SecureBoot)
	}
	b.WriteString("xe vm-param-set uuid=\"$VM\" HVM-boot-params:order=cd\n")
	b.WriteString("\n# Disks, in boot order.\n")
	for i, d := range att {
		file := shQuote(d.File)
		if !isAbs(d.File) {
			file = "\"$DIR\"/" + shQuote(d.File)
		}
		fmt.Fprintf(&b, "# %s\n", clean(diskLine(i, d, fmt.Sprintf("userdevice %d", devs[i]))))
		fmt.Fprintf(&b, "VDI=$(xe vdi-create sr-uuid=\"$SR\" name-label=%s type=user virtual-size=%d)\n", shQuote(name+" "+d.src.Node), d.Size)
		fmt.Fprintf(&b, "xe vdi-import uuid=\"$VDI\" filename=%s format=%s\n", file, d.Format)
		fmt.Fprintf(&b, "xe vbd-create vm-uuid=\"$VM\" vdi-uuid=\"$VDI\" device=%d bootable=%v mode=RW type=Disk\n", devs[i], i == 0)
	}
	if len(vm.NICs) > 0 {
		b.WriteString("\n# Network adapters: the network with the VMware network's name unless NETn is set.\n")
	}
	for i, n := range vm.NICs {
		v := fmt.Sprintf("NET%d", i)
		label := nicNetwork(n, opts, "")
		fmt.Fprintf(&b, "%s=${%s:-$(xe network-list name-label=%s params=uuid --minimal)}\n", v, v, shQuote(label))
		fmt.Fprintf(&b, "[ -n \"$%s\" ] || { echo %s >&2; exit 1; }\n", v, shQuote(fmt.Sprintf("no network named %q: set %s to a network UUID", label, v)))
		fmt.Fprintf(&b, "xe vif-create vm-uuid=\"$VM\" network-uuid=\"$%s\" device=%d", v, i)
		if n.MAC != "" {
			fmt.Fprintf(&b, " mac=%s", n.MAC)
		}
		b.WriteString("\n")
	}
	b.WriteString("\necho \"$VM\"\n")
	return b.String(), nil
}

func macOrAuto(mac string) string {
	if mac == "" {
		return "generated by the target"
	}
	return mac
}

// shQuote quotes s for a POSIX shell: single quotes, and each quote inside
// closed, backslash-escaped and reopened.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(clean(s), "'", `'\''`) + "'"
}
