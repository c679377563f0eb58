package target

import (
	"fmt"
	"strings"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
)

// Hyper-V limits used for refusals (Windows Server 2016 and later, as
// Microsoft documents them for each generation).
const (
	hvGen1MaxCPUs    = 64
	hvGen2MaxCPUs    = 240
	hvGen1MaxMemMiB  = 1 << 20  // 1 TiB
	hvGen2MaxMemMiB  = 12 << 20 // 12 TiB
	hvSCSIPerCtl     = 64
	hvSCSIControlers = 4
)

// hvIDESlots are the IDE locations of a generation 1 VM in the order
// disks take them; New-VM puts a DVD drive at 1:0, which is removed only
// when a fourth IDE disk needs the place.
var hvIDESlots = [][2]int{{0, 0}, {0, 1}, {1, 1}, {1, 0}}

// HyperV returns a PowerShell script that creates the VM on a Hyper-V host
// (module Hyper-V, Windows Server 2016 / Windows 10 or later).
//
// Mapping: generation 2 for EFI, 1 for BIOS (Options.Generation forces
// one; a generation that cannot boot the guest's firmware is refused);
// static memory of MemoryMiB (rounded up to an even number of MiB); the
// vCPU count; disks in boot order — generation 1: the boot disk on IDE
// 0:0 (the only bus its BIOS boots from), the others on SCSI controller 0
// (or on IDE with Options.Gen1AllIDE); generation 2: SCSI controller 0,
// then 1-3 — with the first disk as the first boot device; one network
// adapter per NIC with its MAC as a static MAC; Secure Boot on with the
// MicrosoftWindows template for Windows guests or the
// MicrosoftUEFICertificateAuthority template for others when the VM had
// Secure Boot, off otherwise.
//
// Refused: VHD disks on generation 2 (it attaches VHDX only), a VHD over
// 2040 GiB or a VHDX over 64 TiB, formats other than VHD and VHDX, more
// than 4 IDE disks (Gen1AllIDE), more than 256 SCSI disks, more vCPUs or
// memory than the generation allows.
func HyperV(vm *vmx.VM, disks []Disk, opts Options) (string, error) {
	name := vmName(vm, opts)
	refuse := func(format string, args ...any) (string, error) {
		return "", &RefusedError{Target: "hyperv", VM: name, Reason: fmt.Sprintf(format, args...)}
	}
	gen := 1
	if vm.Firmware == "efi" {
		gen = 2
	}
	switch opts.Generation {
	case 0:
	case 1, 2:
		if opts.Generation != gen {
			if gen == 2 {
				return refuse("the guest boots with EFI: generation 1 has only a BIOS")
			}
			return refuse("the guest boots with BIOS: generation 2 has only UEFI firmware")
		}
	default:
		return refuse("generation %d does not exist (1 or 2)", opts.Generation)
	}
	att, skipped, err := plan("hyperv", vm, disks, "vhdx", "vhd")
	if err != nil {
		return "", err
	}
	for _, d := range att {
		switch {
		case d.Format == "vhd" && gen == 2:
			return refuse("disk %s (%s) is a VHD: generation 2 VMs (needed for EFI) attach only VHDX; convert to VHDX", d.Node, d.File)
		case d.Format == "vhd" && d.Size > vhdMax:
			return refuse("disk %s (%s) is %s: a VHD holds at most 2040 GiB; convert to VHDX", d.Node, d.File, humanSize(d.Size))
		case d.Size > vhdxMax:
			return refuse("disk %s (%s) is %s: a VHDX holds at most 64 TiB", d.Node, d.File, humanSize(d.Size))
		}
	}
	maxCPU, maxMem := hvGen1MaxCPUs, int64(hvGen1MaxMemMiB)
	if gen == 2 {
		maxCPU, maxMem = hvGen2MaxCPUs, hvGen2MaxMemMiB
	}
	if vm.CPUs > maxCPU {
		return refuse("%d vCPUs: generation %d allows %d", vm.CPUs, gen, maxCPU)
	}
	if vm.MemoryMiB > maxMem {
		return refuse("%d MiB of memory: generation %d allows %d MiB", vm.MemoryMiB, gen, maxMem)
	}
	mem := vm.MemoryMiB + vm.MemoryMiB%2

	// Place the disks.
	type slot struct {
		ctl      string // "IDE" or "SCSI"
		num, loc int
	}
	slots := make([]slot, len(att))
	ide, scsi := 0, 0
	removeDVD := false
	for i := range att {
		if gen == 1 && (i == 0 || opts.Gen1AllIDE) {
			if ide == len(hvIDESlots) {
				return refuse("%d disks on IDE: generation 1 has 4 IDE locations", len(att))
			}
			s := hvIDESlots[ide]
			slots[i] = slot{"IDE", s[0], s[1]}
			removeDVD = removeDVD || (s[0] == 1 && s[1] == 0)
			ide++
			continue
		}
		if scsi == hvSCSIPerCtl*hvSCSIControlers {
			return refuse("%d disks: Hyper-V attaches at most %d SCSI disks", len(att), hvSCSIPerCtl*hvSCSIControlers)
		}
		slots[i] = slot{"SCSI", scsi / hvSCSIPerCtl, scsi % hvSCSIPerCtl}
		scsi++
	}
	scsiCtls := (scsi + hvSCSIPerCtl - 1) / hvSCSIPerCtl

	var h header
	intro(&h, "Hyper-V", vm, name)
	h.add("Generation %d (%s firmware)", gen, map[int]string{1: "BIOS", 2: "UEFI"}[gen])
	var mapped, unmapped, needs []string
	for i, d := range att {
		dest := fmt.Sprintf("%s %d:%d", slots[i].ctl, slots[i].num, slots[i].loc)
		if i == 0 {
			dest += ", boot disk"
		}
		mapped = append(mapped, diskLine(i, d, dest))
	}
	for i, n := range vm.NICs {
		mac := "dynamic MAC"
		if n.MAC != "" {
			mac = "static MAC " + hvMAC(n.MAC)
		}
		mapped = append(mapped, fmt.Sprintf("%s (%s, %s, network %q) -> network adapter %d, switch %q, %s", n.Name, orUnknown(n.Model), orUnknown(n.MAC), n.Network, i+1, nicNetwork(n, opts, ""), mac))
	}
	mapped = append(mapped, fmt.Sprintf("memory: %d MiB static (dynamic memory off)", mem), fmt.Sprintf("processor: %d virtual processors", vm.CPUs))
	if gen == 2 {
		mapped = append(mapped, "Secure Boot: "+hvSecureBootText(vm))
	}
	if mem != vm.MemoryMiB {
		unmapped = append(unmapped, fmt.Sprintf("memory %d MiB rounded up to %d MiB (Hyper-V needs an even number of MiB)", vm.MemoryMiB, mem))
	}
	if vm.CoresPerSocket > 1 {
		unmapped = append(unmapped, fmt.Sprintf("%d cores per socket: Hyper-V sets the guest's topology itself", vm.CoresPerSocket))
	}
	unmapped = append(unmapped, controllerNotes(att, "Hyper-V's "+map[int]string{1: "emulated IDE / synthetic SCSI", 2: "synthetic SCSI"}[gen]+" controller")...)
	unmapped = append(unmapped, nicNotes(vm, "the Hyper-V synthetic network adapter")...)
	if removeDVD {
		unmapped = append(unmapped, "the DVD drive New-VM adds at IDE 1:0 is removed to make room for a fourth IDE disk")
	}
	unmapped = append(unmapped, commonUnmapped(vm, skipped)...)
	if gen == 2 && !vmx.Is64Bit(vm.GuestOS) {
		needs = append(needs, fmt.Sprintf("generation 2 boots 64-bit guests only, and guestOS %q does not name a 64-bit one", vm.GuestOS))
	}
	switch vm.GuestFamily() {
	case "windows":
		needs = append(needs, "Windows has the Hyper-V drivers built in from Windows Server 2008 R2 / Windows 7 on; older versions need the Integration Services for SCSI disks and the network adapter")
	case "linux":
		needs = append(needs, "Linux needs hv_vmbus, hv_storvsc and hv_netvsc in its initramfs (in the kernel since 3.x; rebuild a host-only initramfs with dracut --add-drivers or update-initramfs before the migration)")
	default:
		needs = append(needs, "the guest needs drivers for Hyper-V's synthetic devices (VMBus storage and network)")
	}
	needs = append(needs, commonNeeds(vm)...)
	h.section("Mapped", mapped)
	h.section("Not mapped or changed", unmapped)
	h.section("The guest may still need", needs)
	h.section("Problems found in the VMware files", vm.Problems)

	var b strings.Builder
	b.WriteString(h.render("# "))
	b.WriteString("\n#Requires -Modules Hyper-V\n")
	b.WriteString("[CmdletBinding()]\nparam(\n")
	fmt.Fprintf(&b, "    [string]$Name = %s,\n", psQuote(name))
	b.WriteString("    # Folder of the converted disks named by relative paths below.\n")
	b.WriteString("    [string]$DiskDir = $PSScriptRoot,\n")
	b.WriteString("    # Folder for the VM's configuration; empty for the host's default.\n")
	b.WriteString("    [string]$VMPath = ''\n)\n")
	b.WriteString("$ErrorActionPreference = 'Stop'\n\n")
	if len(vm.NICs) > 0 {
		b.WriteString("# VMware network -> Hyper-V virtual switch (edit to match this host; empty = not connected).\n")
		b.WriteString("$Switches = @{\n")
		seen := map[string]bool{}
		for _, n := range vm.NICs {
			if seen[n.Network] {
				continue
			}
			seen[n.Network] = true
			fmt.Fprintf(&b, "    %s = %s\n", psQuote(n.Network), psQuote(nicNetwork(n, opts, "")))
		}
		b.WriteString("}\n\n")
	}
	fmt.Fprintf(&b, "$newVM = @{ Name = $Name; Generation = %d; MemoryStartupBytes = %dMB; NoVHD = $true }\n", gen, mem)
	b.WriteString("if ($VMPath) { $newVM.Path = $VMPath }\n")
	b.WriteString("$vm = New-VM @newVM\n")
	b.WriteString("Set-VMMemory -VM $vm -DynamicMemoryEnabled $false\n")
	fmt.Fprintf(&b, "Set-VMProcessor -VM $vm -Count %d\n", vm.CPUs)
	if gen == 2 {
		switch t := hvSecureBootTemplate(vm); t {
		case "":
			b.WriteString("Set-VMFirmware -VM $vm -EnableSecureBoot Off\n")
		default:
			fmt.Fprintf(&b, "Set-VMFirmware -VM $vm -EnableSecureBoot On -SecureBootTemplate %s\n", t)
		}
	}
	b.WriteString("\n# Disks, in boot order.\n")
	if removeDVD {
		b.WriteString("Get-VMDvdDrive -VM $vm | Where-Object { $_.ControllerNumber -eq 1 -and $_.ControllerLocation -eq 0 } | Remove-VMDvdDrive\n")
	}
	if scsi > 0 {
		if gen == 1 {
			b.WriteString("if (-not (Get-VMScsiController -VM $vm)) { Add-VMScsiController -VM $vm }\n")
		}
		if scsiCtls > 1 {
			fmt.Fprintf(&b, "while (@(Get-VMScsiController -VM $vm).Count -lt %d) { Add-VMScsiController -VM $vm }\n", scsiCtls)
		}
	}
	for i, d := range att {
		p := psQuote(d.File)
		if !isAbs(d.File) {
			p = "(Join-Path $DiskDir " + psQuote(d.File) + ")"
		}
		fmt.Fprintf(&b, "# %s\n", clean(diskLine(i, d, fmt.Sprintf("%s %d:%d", slots[i].ctl, slots[i].num, slots[i].loc))))
		fmt.Fprintf(&b, "$disk%d = Add-VMHardDiskDrive -VM $vm -ControllerType %s -ControllerNumber %d -ControllerLocation %d -Path %s -Passthru\n",
			i, slots[i].ctl, slots[i].num, slots[i].loc, p)
	}
	if gen == 2 {
		b.WriteString("Set-VMFirmware -VM $vm -FirstBootDevice $disk0\n")
	} else {
		b.WriteString("Set-VMBios -VM $vm -StartupOrder @('IDE', 'CD', 'LegacyNetworkAdapter', 'Floppy')\n")
	}
	b.WriteString("\n# Network adapters.\n")
	b.WriteString("Get-VMNetworkAdapter -VM $vm | Remove-VMNetworkAdapter\n")
	for i, n := range vm.NICs {
		fmt.Fprintf(&b, "$nic%d = Add-VMNetworkAdapter -VM $vm -Name %s -Passthru\n", i, psQuote(n.Name))
		if n.MAC != "" {
			fmt.Fprintf(&b, "Set-VMNetworkAdapter -VMNetworkAdapter $nic%d -StaticMacAddress %s\n", i, psQuote(hvMAC(n.MAC)))
		}
		fmt.Fprintf(&b, "if ($Switches[%s]) { Connect-VMNetworkAdapter -VMNetworkAdapter $nic%d -SwitchName $Switches[%s] }\n", psQuote(n.Network), i, psQuote(n.Network))
	}
	b.WriteString("\n$vm\n")
	return b.String(), nil
}

// hvMAC is a MAC in Hyper-V's form: 12 upper-case hex digits.
func hvMAC(mac string) string { return strings.ToUpper(strings.ReplaceAll(mac, ":", "")) }

// hvSecureBootTemplate returns the Secure Boot template for a generation 2
// VM, "" for Secure Boot off: MicrosoftWindows trusts only Microsoft's
// Windows CA; Linux shims are signed by the Microsoft UEFI CA.
func hvSecureBootTemplate(vm *vmx.VM) string {
	if !vm.SecureBoot {
		return ""
	}
	if vm.GuestFamily() == "windows" {
		return "MicrosoftWindows"
	}
	return "MicrosoftUEFICertificateAuthority"
}

func hvSecureBootText(vm *vmx.VM) string {
	if t := hvSecureBootTemplate(vm); t != "" {
		return "on, template " + t
	}
	return "off (the VM had no Secure Boot)"
}

// psQuote quotes s as a PowerShell single-quoted string. PowerShell also
// ends such strings at the typographic single quotes, so those are
// doubled as well.
func psQuote(s string) string {
	s = clean(s)
	var b strings.Builder
	b.WriteByte('\'')
	for _, r := range s {
		switch r {
		case '\'', '\u2018', '\u2019', '\u201a', '\u201b':
			b.WriteRune(r)
		}
		b.WriteRune(r)
	}
	b.WriteByte('\'')
	return b.String()
}

// controllerNotes says which VMware controllers become what.
func controllerNotes(att []attached, dest string) []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range att {
		if seen[d.src.ControllerType] {
			continue
		}
		seen[d.src.ControllerType] = true
		out = append(out, fmt.Sprintf("VMware %s controller (%s): replaced by %s", d.src.ControllerType, d.src.Controller, dest))
	}
	return out
}

// nicNotes says which VMware adapter models become what.
func nicNotes(vm *vmx.VM, dest string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range vm.NICs {
		if seen[n.Model] {
			continue
		}
		seen[n.Model] = true
		out = append(out, fmt.Sprintf("VMware %s adapter: replaced by %s", orUnknown(n.Model), dest))
	}
	return out
}
