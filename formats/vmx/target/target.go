// Package target turns a vmx.VM and the disks converted from it into the
// definition of the same machine on another hypervisor: a PowerShell
// script for Hyper-V, an xe script for XenServer / XCP-ng, a libvirt
// domain XML for KVM, and qm commands for Proxmox VE.
//
// Every emitter is a pure function of the VM, the converted disks and the
// options: no I/O, no clock, the same input gives the same text. Each
// output starts with a comment block that says what was mapped, what was
// not (controller and adapter models the target does not have, CD-ROMs,
// USB, sound, snapshots …) and what the guest may still need (drivers,
// boot entries). When the VM cannot fit the target — a disk over a size
// limit, a firmware the chosen generation cannot boot, too many disks on a
// bus — the emitter refuses with a *RefusedError that says why.
//
// Disks are attached in the VM's boot order (vmx.VM.Disks); the first
// converted disk is the boot disk.
package target

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
)

// Disk is one converted disk to attach.
type Disk struct {
	// Node is the vmx.Disk.Node it was converted from ("scsi0:0").
	Node string
	// File is the output file as the target host will see it: an absolute
	// path, or a path relative to the folder of the generated script (for
	// libvirt: relative to Options.ImageDir).
	File string
	// Format is "vhd", "vhdx", "qcow2" or "raw".
	Format string
	// Size is the virtual size of the output image in bytes (for VHD, the
	// current size in its footer).
	Size int64
}

// Options adjust the mapping. The zero value picks defaults for the guest.
type Options struct {
	// Name is the VM's name on the target; "" uses vm.Name.
	Name string
	// Networks maps a VMware network (vmx.NIC.Network) to the target's:
	// Hyper-V virtual switch, XenServer network name-label, libvirt
	// network, Proxmox bridge. A network not in the map keeps its VMware
	// name on Hyper-V and XenServer, and goes to DefaultNetwork on libvirt
	// and Proxmox.
	Networks map[string]string
	// DefaultNetwork is the libvirt network ("default" when "") or the
	// Proxmox bridge ("vmbr0" when "") for unmapped networks.
	DefaultNetwork string
	// DiskBus overrides the bus of the disks on libvirt ("sata",
	// "virtio", "scsi", "ide") and Proxmox ("sata", "scsi", "virtio",
	// "ide"). "" picks by guest: SATA for Windows and unknown guests (the
	// AHCI driver is built into every current OS), virtio for Linux on
	// libvirt and virtio-scsi on Proxmox.
	DiskBus string
	// NICModel overrides the adapter model on libvirt and Proxmox
	// ("e1000e", "e1000", "virtio", "rtl8139", "vmxnet3"). "" picks
	// e1000e for Windows and unknown guests, virtio for Linux.
	NICModel string
	// Generation forces the Hyper-V generation (1 or 2); 0 picks 2 for
	// EFI and 1 for BIOS.
	Generation int
	// Gen1AllIDE puts every disk of a Hyper-V generation 1 VM on IDE (at
	// most 4, replacing the default DVD drive when needed) for guests
	// without the Hyper-V storage driver; by default only the boot disk
	// is on IDE and the others on SCSI.
	Gen1AllIDE bool
	// ImageDir is the folder libvirt finds relative disk files in
	// ("/var/lib/libvirt/images" when "").
	ImageDir string
	// VMID is the Proxmox VM ID; 0 lets the script take the next free one.
	VMID int
	// Storage is the Proxmox storage for disks and the EFI disk
	// ("local-lvm" when "").
	Storage string
}

// ErrRefused reports a VM that cannot be defined on a target as it is.
var ErrRefused = errors.New("the target cannot hold this VM")

// RefusedError says why a target refuses a VM. It unwraps to ErrRefused.
type RefusedError struct {
	Target string // "hyperv", "xe", "libvirt", "proxmox"
	VM     string
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("target %s: VM %q: %s", e.Target, e.VM, e.Reason)
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// Names returns the target names Emit accepts.
func Names() []string { return []string{"hyperv", "xe", "libvirt", "proxmox"} }

// Emit calls the emitter of target ("hyperv", "xe", "libvirt",
// "proxmox").
func Emit(target string, vm *vmx.VM, disks []Disk, opts Options) (string, error) {
	switch strings.ToLower(target) {
	case "hyperv", "hyper-v":
		return HyperV(vm, disks, opts)
	case "xe", "xenserver", "xcp-ng":
		return Xe(vm, disks, opts)
	case "libvirt", "kvm":
		return Libvirt(vm, disks, opts)
	case "proxmox", "pve", "qm":
		return Proxmox(vm, disks, opts)
	}
	return "", fmt.Errorf("target: unknown target %q (one of %s)", target, strings.Join(Names(), ", "))
}

// attached is a converted disk with the VM disk it comes from.
type attached struct {
	Disk
	src vmx.Disk
}

// plan matches disks to the VM's disks in boot order. It refuses disks
// that name no VM disk, a node given twice, sizes that are not positive,
// formats not in formats, and an empty result.
func plan(target string, vm *vmx.VM, disks []Disk, formats ...string) ([]attached, []string, error) {
	refuse := func(format string, args ...any) error {
		return &RefusedError{Target: target, VM: vm.Name, Reason: fmt.Sprintf(format, args...)}
	}
	byNode := map[string]Disk{}
	for _, d := range disks {
		n := strings.ToLower(d.Node)
		if _, ok := vm.Disk(n); !ok {
			return nil, nil, refuse("disk %s (%s) is not a disk of the VM", d.Node, d.File)
		}
		if _, dup := byNode[n]; dup {
			return nil, nil, refuse("disk %s is given twice", d.Node)
		}
		if d.Size <= 0 {
			return nil, nil, refuse("disk %s (%s): size %d is not positive", d.Node, d.File, d.Size)
		}
		if d.File == "" {
			return nil, nil, refuse("disk %s has no output file", d.Node)
		}
		d.Format = strings.ToLower(d.Format)
		if !slices.Contains(formats, d.Format) {
			return nil, nil, refuse("disk %s (%s): format %q cannot be attached here (%s can)", d.Node, d.File, d.Format, strings.Join(formats, ", "))
		}
		byNode[n] = d
	}
	var out []attached
	var skipped []string
	for _, s := range vm.Disks {
		d, ok := byNode[strings.ToLower(s.Node)]
		if !ok {
			skipped = append(skipped, fmt.Sprintf("disk %s (%s) was not converted and is not attached", s.Node, s.FileName))
			continue
		}
		out = append(out, attached{Disk: d, src: s})
	}
	if len(out) == 0 {
		return nil, nil, refuse("no converted disk to attach")
	}
	return out, skipped, nil
}

// vmName is the name on the target.
func vmName(vm *vmx.VM, opts Options) string {
	if opts.Name != "" {
		return clean(opts.Name)
	}
	return clean(vm.Name)
}

// clean replaces control characters (a |0A escape can put a newline in a
// VMware display name) so that a name cannot end a comment or a line.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0x2028 || r == 0x2029 || (r >= 0x80 && r < 0xa0) || r == 0xfffe || r == 0xffff {
			return '_'
		}
		return r
	}, s)
}

// header builds the comment block common to every target; the emitter
// adds its own mapped/unmapped/needs lines.
type header struct {
	lines []string
}

func (h *header) add(format string, args ...any) {
	h.lines = append(h.lines, clean(fmt.Sprintf(format, args...)))
}

func (h *header) section(title string, items []string) {
	if len(items) == 0 {
		return
	}
	h.add("")
	h.add("%s:", title)
	for _, it := range items {
		h.add("  - %s", it)
	}
}

// render prefixes every line with prefix (trailing blanks trimmed).
func (h *header) render(prefix string) string {
	var b strings.Builder
	for _, l := range h.lines {
		b.WriteString(strings.TrimRight(prefix+l, " "))
		b.WriteByte('\n')
	}
	return b.String()
}

// intro writes the lines every header starts with.
func intro(h *header, targetName string, vm *vmx.VM, name string) {
	h.add("Generated by vmfs2vhd: %s definition of VM %q", targetName, name)
	h.add("Source: %s (display name %q)", vm.VMXPath, vm.Name)
	fw := vm.Firmware
	if vm.Firmware == "efi" && vm.SecureBoot {
		fw += " with Secure Boot"
	}
	h.add("Guest: %s (%s), firmware %s, %d vCPU (%d socket(s) x %d core(s)), %d MiB, virtual hardware %d",
		orUnknown(vm.GuestOS), vm.GuestFamily(), fw, vm.CPUs, vm.Sockets(), vm.CoresPerSocket, vm.MemoryMiB, vm.HWVersion)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// commonUnmapped lists what no target receives.
func commonUnmapped(vm *vmx.VM, skipped []string) []string {
	out := append([]string(nil), skipped...)
	for _, c := range vm.CDROMs {
		out = append(out, fmt.Sprintf("CD/DVD %s (%s %q): not attached; attach installation media on the target if needed", c.Node, c.DeviceType, c.FileName))
	}
	for _, u := range vm.Unmapped {
		out = append(out, "device "+u+": no counterpart is created")
	}
	if len(vm.Snapshots) > 0 {
		out = append(out, fmt.Sprintf("%d snapshot(s): only the state the VM runs on (the disks its .vmx names) is converted", len(vm.Snapshots)))
	}
	for _, n := range vm.NICs {
		if n.MAC == "" {
			out = append(out, fmt.Sprintf("%s has no MAC address in the .vmx: the target generates one", n.Name))
		}
	}
	return out
}

// commonNeeds lists what the guest may need on any target.
func commonNeeds(vm *vmx.VM) []string {
	var out []string
	out = append(out, "remove VMware Tools (open-vm-tools on Linux) after the first boot; install the target's guest agent")
	if vm.Firmware == "efi" {
		out = append(out, `the VM's EFI boot entries live in VMware's .nvram and are not carried over: the target's firmware starts \EFI\BOOT\BOOTX64.EFI (Windows disks have it; some Linux installs need grub-install --removable or a new boot entry)`)
	}
	for _, u := range vm.Unmapped {
		if strings.EqualFold(u, "vtpm") {
			out = append(out, "the VM had a virtual TPM, which is not migrated: suspend BitLocker (or other TPM-sealed keys) before the conversion and add a TPM on the target if the guest needs one (Windows 11)")
		}
	}
	if vm.GuestFamily() == "linux" {
		out = append(out, "network interface names change with the adapter model and PCI slot (ens192 becomes another name): check the network configuration; the MAC addresses are kept")
	}
	if vm.GuestFamily() == "windows" {
		out = append(out, "Windows sees new network adapters: static IP settings stay with the old (hidden) adapter and must be set again")
	}
	return out
}

// isAbs reports whether a disk file name is absolute on a POSIX or a
// Windows host.
func isAbs(p string) bool {
	return strings.HasPrefix(p, "/") || strings.HasPrefix(p, `\\`) || (len(p) >= 3 && p[1] == ':' && (p[2] == '\\' || p[2] == '/'))
}

// humanSize formats a size in bytes with its binary unit.
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%d bytes, %.1f %s", n, f, units[i])
}

// diskLine describes a converted disk for a header.
func diskLine(i int, d attached, dest string) string {
	return fmt.Sprintf("%d. %s (%s, %s) -> %s [%s, %s] on %s", i+1, d.src.Node, d.src.ControllerType, d.src.FileName, path.Base(strings.ReplaceAll(d.File, `\`, "/")), d.Format, humanSize(d.Size), dest)
}

// nicNetwork maps a VMware network through opts.Networks.
func nicNetwork(n vmx.NIC, opts Options, def string) string {
	if v, ok := opts.Networks[n.Network]; ok {
		return v
	}
	if def != "" {
		return def
	}
	return n.Network
}

// devName returns the bus-relative device names of libvirt: sda, sdb …
// sdz, sdaa ….
func devName(prefix string, i int) string {
	s := ""
	for i >= 0 {
		s = string(rune('a'+i%26)) + s
		i = i/26 - 1
	}
	return prefix + s
}

const (
	gib = int64(1) << 30
	tib = int64(1) << 40
	// vhdMax is the largest VHD Hyper-V and XenServer accept (2040 GiB).
	vhdMax = 2040 * gib
	// vhdxMax is the VHDX format's limit (64 TiB).
	vhdxMax = 64 * tib
)
