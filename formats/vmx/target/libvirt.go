package target

import (
	"encoding/xml"
	"fmt"
	"path"
	"strings"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
)

// libvirt domain XML, the part this package writes (schema:
// https://libvirt.org/formatdomain.html; checked by virt-xml-validate in
// the tests).
type lvDomain struct {
	XMLName     xml.Name   `xml:"domain"`
	Type        string     `xml:"type,attr"`
	Name        string     `xml:"name"`
	Description string     `xml:"description,omitempty"`
	Memory      lvUnit     `xml:"memory"`
	VCPU        lvVCPU     `xml:"vcpu"`
	OS          lvOS       `xml:"os"`
	Features    lvFeatures `xml:"features"`
	CPU         lvCPU      `xml:"cpu"`
	Clock       lvClock    `xml:"clock"`
	Devices     lvDevices  `xml:"devices"`
}

type lvUnit struct {
	Unit  string `xml:"unit,attr"`
	Value int64  `xml:",chardata"`
}

type lvVCPU struct {
	Placement string `xml:"placement,attr"`
	Value     int    `xml:",chardata"`
}

type lvOS struct {
	Firmware string      `xml:"firmware,attr,omitempty"`
	Type     lvOSType    `xml:"type"`
	FW       *lvFirmware `xml:"firmware,omitempty"`
}

type lvOSType struct {
	Arch    string `xml:"arch,attr"`
	Machine string `xml:"machine,attr"`
	Value   string `xml:",chardata"`
}

type lvFirmware struct {
	Features []lvFWFeature `xml:"feature"`
}

type lvFWFeature struct {
	Enabled string `xml:"enabled,attr"`
	Name    string `xml:"name,attr"`
}

type lvFeatures struct {
	ACPI   struct{}  `xml:"acpi"`
	APIC   struct{}  `xml:"apic"`
	HyperV *lvHyperV `xml:"hyperv,omitempty"`
	SMM    *lvState  `xml:"smm,omitempty"`
}

type lvHyperV struct {
	Mode      string     `xml:"mode,attr"`
	Relaxed   lvState    `xml:"relaxed"`
	VAPIC     lvState    `xml:"vapic"`
	Spinlocks lvSpinlock `xml:"spinlocks"`
}

type lvSpinlock struct {
	State   string `xml:"state,attr"`
	Retries int    `xml:"retries,attr"`
}

type lvState struct {
	State string `xml:"state,attr"`
}

type lvCPU struct {
	Mode     string     `xml:"mode,attr"`
	Topology lvTopology `xml:"topology"`
}

type lvTopology struct {
	Sockets int `xml:"sockets,attr"`
	Dies    int `xml:"dies,attr"`
	Cores   int `xml:"cores,attr"`
	Threads int `xml:"threads,attr"`
}

type lvClock struct {
	Offset string    `xml:"offset,attr"`
	Timers []lvTimer `xml:"timer"`
}

type lvTimer struct {
	Name       string `xml:"name,attr"`
	TickPolicy string `xml:"tickpolicy,attr,omitempty"`
	Present    string `xml:"present,attr,omitempty"`
}

type lvDevices struct {
	Controllers []lvController `xml:"controller"`
	Disks       []lvDisk       `xml:"disk"`
	Interfaces  []lvInterface  `xml:"interface"`
	Graphics    lvGraphics     `xml:"graphics"`
	Video       lvVideo        `xml:"video"`
}

type lvController struct {
	Type  string `xml:"type,attr"`
	Index int    `xml:"index,attr"`
	Model string `xml:"model,attr"`
}

type lvDisk struct {
	Type   string   `xml:"type,attr"`
	Device string   `xml:"device,attr"`
	Driver lvDriver `xml:"driver"`
	Source lvSource `xml:"source"`
	Target lvTarget `xml:"target"`
	Boot   *lvBoot  `xml:"boot,omitempty"`
}

type lvDriver struct {
	Name string `xml:"name,attr"`
	Type string `xml:"type,attr"`
}

type lvSource struct {
	File string `xml:"file,attr"`
}

type lvTarget struct {
	Dev string `xml:"dev,attr"`
	Bus string `xml:"bus,attr"`
}

type lvBoot struct {
	Order int `xml:"order,attr"`
}

type lvInterface struct {
	Type   string      `xml:"type,attr"`
	MAC    *lvMAC      `xml:"mac,omitempty"`
	Source lvNetSource `xml:"source"`
	Model  lvModel     `xml:"model"`
}

type lvMAC struct {
	Address string `xml:"address,attr"`
}

type lvNetSource struct {
	Network string `xml:"network,attr"`
}

type lvModel struct {
	Type string `xml:"type,attr"`
}

type lvGraphics struct {
	Type     string `xml:"type,attr"`
	Port     int    `xml:"port,attr"`
	Autoport string `xml:"autoport,attr"`
}

type lvVideo struct {
	Model lvModel `xml:"model"`
}

// Libvirt returns a libvirt domain XML for KVM (define it with
// `virsh define FILE`).
//
// Mapping: memory and vCPUs with the sockets × cores topology; machine
// q35 (pc for the IDE bus); <os firmware="efi"> with the secure-boot and
// enrolled-keys firmware features on or off as on VMware (and SMM on for
// Secure Boot), or BIOS; disks in boot order with <boot order="N"/>, on
// a bus the guest boots from without new drivers — SATA for Windows and
// unknown guests, virtio for Linux (Options.DiskBus overrides) — with the
// driver type of the file (qcow2 or raw); NICs with their MAC on the
// network of the same name in Options.Networks, else
// Options.DefaultNetwork ("default"), model e1000e for Windows and
// unknown guests, virtio for Linux (Options.NICModel overrides); Windows
// guests get local-time clock and the usual Hyper-V enlightenments.
//
// Refused: formats other than qcow2 and raw; more disks than the bus
// takes (IDE: 4); the IDE bus with Secure Boot (it needs q35).
func Libvirt(vm *vmx.VM, disks []Disk, opts Options) (string, error) {
	name := vmName(vm, opts)
	refuse := func(format string, args ...any) (string, error) {
		return "", &RefusedError{Target: "libvirt", VM: name, Reason: fmt.Sprintf(format, args...)}
	}
	att, skipped, err := plan("libvirt", vm, disks, "qcow2", "raw")
	if err != nil {
		return "", err
	}
	family := vm.GuestFamily()
	bus := strings.ToLower(opts.DiskBus)
	if bus == "" {
		bus = "sata"
		if family == "linux" {
			bus = "virtio"
		}
	}
	prefix := map[string]string{"sata": "sd", "scsi": "sd", "virtio": "vd", "ide": "hd"}[bus]
	if prefix == "" {
		return refuse("disk bus %q is not one of sata, scsi, virtio, ide", opts.DiskBus)
	}
	machine := "q35"
	if bus == "ide" {
		if vm.Firmware == "efi" && vm.SecureBoot {
			return refuse("the IDE bus needs the pc machine type, and Secure Boot needs q35")
		}
		if len(att) > 4 {
			return refuse("%d disks: the IDE bus takes 4", len(att))
		}
		machine = "pc"
	}
	nicModel := strings.ToLower(opts.NICModel)
	if nicModel == "" {
		nicModel = "e1000e"
		if family == "linux" {
			nicModel = "virtio"
		}
	}
	netDef := opts.DefaultNetwork
	if netDef == "" {
		netDef = "default"
	}
	imageDir := opts.ImageDir
	if imageDir == "" {
		imageDir = "/var/lib/libvirt/images"
	}

	d := lvDomain{
		Type:   "kvm",
		Name:   strings.ReplaceAll(name, "/", "_"),
		Memory: lvUnit{"MiB", vm.MemoryMiB},
		VCPU:   lvVCPU{"static", vm.CPUs},
		OS:     lvOS{Type: lvOSType{Arch: "x86_64", Machine: machine, Value: "hvm"}},
		CPU:    lvCPU{Mode: "host-model", Topology: lvTopology{Sockets: vm.Sockets(), Dies: 1, Cores: max(vm.CPUs/vm.Sockets(), 1), Threads: 1}},
		Clock:  lvClock{Offset: "utc"},
	}
	d.Description = clean(fmt.Sprintf("Converted by vmfs2vhd from %s", vm.VMXPath))
	if vm.Firmware == "efi" {
		d.OS.Firmware = "efi"
		on := map[bool]string{true: "yes", false: "no"}[vm.SecureBoot]
		d.OS.FW = &lvFirmware{Features: []lvFWFeature{{on, "enrolled-keys"}, {on, "secure-boot"}}}
		if vm.SecureBoot {
			d.Features.SMM = &lvState{"on"}
		}
	}
	if family == "windows" {
		d.Clock.Offset = "localtime"
		d.Features.HyperV = &lvHyperV{Mode: "custom", Relaxed: lvState{"on"}, VAPIC: lvState{"on"}, Spinlocks: lvSpinlock{"on", 8191}}
		d.Clock.Timers = []lvTimer{{Name: "rtc", TickPolicy: "catchup"}, {Name: "hypervclock", Present: "yes"}}
	}
	if bus == "scsi" {
		// Without a model libvirt may pick an LSI controller, which
		// current QEMU builds and Windows lack.
		d.Devices.Controllers = []lvController{{Type: "scsi", Index: 0, Model: "virtio-scsi"}}
	}
	var mapped, unmapped, needs []string
	for i, a := range att {
		file := a.File
		if !isAbs(file) {
			file = path.Join(imageDir, file)
		}
		dev := devName(prefix, i)
		d.Devices.Disks = append(d.Devices.Disks, lvDisk{
			Type: "file", Device: "disk",
			Driver: lvDriver{"qemu", a.Format},
			Source: lvSource{file},
			Target: lvTarget{dev, bus},
			Boot:   &lvBoot{i + 1},
		})
		mapped = append(mapped, diskLine(i, a, fmt.Sprintf("%s (bus %s), boot order %d", dev, bus, i+1)))
	}
	for _, n := range vm.NICs {
		iface := lvInterface{Type: "network", Source: lvNetSource{nicNetwork(n, opts, netDef)}, Model: lvModel{nicModel}}
		if n.MAC != "" {
			iface.MAC = &lvMAC{n.MAC}
		}
		d.Devices.Interfaces = append(d.Devices.Interfaces, iface)
		mapped = append(mapped, fmt.Sprintf("%s (%s, %s, network %q) -> interface model %s on network %q, MAC %s", n.Name, orUnknown(n.Model), orUnknown(n.MAC), n.Network, nicModel, iface.Source.Network, macOrAuto(n.MAC)))
	}
	d.Devices.Graphics = lvGraphics{Type: "vnc", Port: -1, Autoport: "yes"}
	d.Devices.Video = lvVideo{lvModel{"vga"}}
	fw := "BIOS (SeaBIOS)"
	if vm.Firmware == "efi" {
		fw = "UEFI (OVMF), Secure Boot " + map[bool]string{true: "on with enrolled keys", false: "off"}[vm.SecureBoot]
	}
	mapped = append(mapped,
		fmt.Sprintf("memory %d MiB, %d vCPU as %d socket(s) x %d core(s), machine %s", vm.MemoryMiB, vm.CPUs, vm.Sockets(), d.CPU.Topology.Cores, machine),
		"firmware: "+fw)
	dest := "the " + bus + " bus"
	if bus == "scsi" {
		dest += " (virtio-scsi controller)"
	}
	unmapped = append(unmapped, controllerNotes(att, dest)...)
	unmapped = append(unmapped, nicNotes(vm, "model "+nicModel)...)
	unmapped = append(unmapped, commonUnmapped(vm, skipped)...)
	if bus == "virtio" || bus == "scsi" || nicModel == "virtio" {
		switch family {
		case "windows":
			needs = append(needs, "Windows has no virtio drivers: install virtio-win (viostor/vioscsi, NetKVM) before switching the disks or NICs to virtio")
		default:
			needs = append(needs, "virtio_blk, virtio_scsi, virtio_net and virtio_pci must be in the initramfs (a host-only initramfs built on VMware lacks them: rebuild it, e.g. dracut -f --add-drivers 'virtio_blk virtio_scsi virtio_net virtio_pci')")
		}
	}
	if family == "windows" {
		needs = append(needs, "install the virtio-win guest tools later to move to virtio disks and NICs for speed")
	}
	if vm.Firmware == "efi" {
		needs = append(needs, "<os firmware=\"efi\"> with firmware features needs libvirt 7.2 or later and OVMF (edk2-ovmf / ovmf) installed")
	}
	needs = append(needs, commonNeeds(vm)...)
	var h header
	intro(&h, "libvirt (KVM)", vm, d.Name)
	h.section("Mapped", mapped)
	h.section("Not mapped or changed", unmapped)
	h.section("The guest may still need", needs)
	h.section("Problems found in the VMware files", vm.Problems)

	out, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return "", fmt.Errorf("target libvirt: %w", err)
	}
	var b strings.Builder
	b.WriteString("<!--\n")
	text := h.render("  ")
	for strings.Contains(text, "--") { // not allowed in an XML comment
		text = strings.ReplaceAll(text, "--", "- -")
	}
	b.WriteString(text)
	b.WriteString("-->\n")
	b.Write(out)
	b.WriteString("\n")
	return b.String(), nil
}
