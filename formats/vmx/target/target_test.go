package target

import (
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// controllers of the matrix: how the VMX declares them, the node prefix of
// their disks, and the guest that goes with them (both families are
// covered).
var controllers = []struct {
	name, decl, prefix, guest string
}{
	{"lsilogic", "scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsilogic\"\n", "scsi0", "windows2019srv-64"},
	{"pvscsi", "scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n", "scsi0", "rhel8-64"},
	{"sata", "sata0.present = \"TRUE\"\n", "sata0", "windows9-64"},
	{"nvme", "nvme0.present = \"TRUE\"\n", "nvme0", "ubuntu-64"},
	{"ide", "", "ide0", "windows7-64"},
}

var macs = []string{"00:50:56:9a:01:02", "00:0c:29:ab:cd:ef"}

// sizes of the two disks: 40 GiB and an odd size just under 100 GiB.
var sizes = []int64{40 << 30, 100<<30 - 512*3}

// matrixVM builds a VM of the matrix from VMX text, as Build would see it
// on a datastore.
func matrixVM(t *testing.T, firmware string, c int) *vmx.VM {
	t.Helper()
	ctl := controllers[c]
	var b strings.Builder
	fmt.Fprintf(&b, ".encoding = \"UTF-8\"\ndisplayName = \"vm-%s-%s\"\nguestOS = %q\nnumvcpus = \"4\"\ncpuid.coresPerSocket = \"2\"\nmemSize = \"6144\"\nvirtualHW.version = \"19\"\n", firmware, ctl.name, ctl.guest)
	if firmware == "efi" {
		b.WriteString("firmware = \"efi\"\n")
		// Secure Boot on all EFI guests but the NVMe Linux one.
		fmt.Fprintf(&b, "uefi.secureBoot.enabled = \"%v\"\n", ctl.name != "nvme")
	}
	b.WriteString(ctl.decl)
	for u := 0; u < 2; u++ {
		fmt.Fprintf(&b, "%s:%d.present = \"TRUE\"\n%s:%d.fileName = \"disk%d.vmdk\"\n", ctl.prefix, u, ctl.prefix, u, u)
	}
	b.WriteString("ide1:0.present = \"TRUE\"\nide1:0.deviceType = \"cdrom-image\"\nide1:0.fileName = \"/vmfs/volumes/ds/iso/setup.iso\"\nusb_xhci.present = \"TRUE\"\n")
	for i, mac := range macs {
		fmt.Fprintf(&b, "ethernet%d.present = \"TRUE\"\nethernet%d.virtualDev = \"vmxnet3\"\nethernet%d.networkName = \"Net %d\"\nethernet%d.addressType = \"vpx\"\nethernet%d.generatedAddress = %q\n", i, i, i, i, i, i, strings.ToUpper(mac))
	}
	f, err := vmx.ParseBytes([]byte(b.String()), "vm.vmx")
	if err != nil {
		t.Fatal(err)
	}
	vm := vmx.Build("vm/vm.vmx", f, nil)
	if len(vm.Disks) != 2 || len(vm.NICs) != 2 || len(vm.Problems) != 0 {
		t.Fatalf("matrix VM: %d disks, %d NICs, problems %q", len(vm.Disks), len(vm.NICs), vm.Problems)
	}
	return vm
}

// matrixDisks are the converted disks of a matrix VM in format.
func matrixDisks(vm *vmx.VM, format string) []Disk {
	var out []Disk
	for i, d := range vm.Disks {
		out = append(out, Disk{Node: d.Node, File: fmt.Sprintf("vm-disk%d.%s", i, format), Format: format, Size: sizes[i]})
	}
	return out
}

type emitter struct {
	name, ext string
	format    func(firmware string) string
	fn        func(*vmx.VM, []Disk, Options) (string, error)
	check     func(t *testing.T, out string, vm *vmx.VM, disks []Disk)
}

var emitters = []emitter{
	{"hyperv", "ps1", func(fw string) string {
		if fw == "bios" {
			return "vhd"
		}
		return "vhdx"
	}, HyperV, checkHyperV},
	{"xe", "sh", func(string) string { return "vhd" }, Xe, checkXe},
	{"libvirt", "xml", func(string) string { return "qcow2" }, Libvirt, checkLibvirt},
	{"proxmox", "sh", func(fw string) string {
		if fw == "bios" {
			return "raw"
		}
		return "qcow2"
	}, Proxmox, checkProxmox},
}

func TestGolden(t *testing.T) {
	for _, e := range emitters {
		for _, fw := range []string{"bios", "efi"} {
			for c := range controllers {
				name := fmt.Sprintf("%s-%s-%s", e.name, fw, controllers[c].name)
				t.Run(name, func(t *testing.T) {
					vm := matrixVM(t, fw, c)
					disks := matrixDisks(vm, e.format(fw))
					out, err := e.fn(vm, disks, Options{})
					if err != nil {
						t.Fatal(err)
					}
					again, _ := e.fn(vm, disks, Options{})
					if again != out {
						t.Fatal("two runs differ")
					}
					checkCommon(t, out, vm, disks)
					e.check(t, out, vm, disks)
					if e.ext == "sh" {
						checkShellSyntax(t, out)
					}
					golden(t, filepath.Join("testdata", "golden", name+"."+e.ext), out)
				})
			}
		}
	}
}

// checkShellSyntax parses a script with sh -n (skipped without a shell).
func checkShellSyntax(t *testing.T, script string) {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Log("no sh: syntax not checked")
		return
	}
	if msg, err := exec.Command(sh, "-n", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v %s", err, msg)
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./formats/vmx/target -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the output (rerun with -update after checking):\n%s", path, got)
	}
}

// checkCommon: every output names each disk file, its size in bytes, the
// unmapped devices and the drivers section.
func checkCommon(t *testing.T, out string, vm *vmx.VM, disks []Disk) {
	t.Helper()
	for _, d := range disks {
		if !strings.Contains(out, d.File) || !strings.Contains(out, fmt.Sprintf("%d bytes", d.Size)) {
			t.Errorf("output lacks disk %s or its size %d", d.File, d.Size)
		}
	}
	for _, want := range []string{"Not mapped or changed:", "device usb_xhci", "CD/DVD ide1:0", "The guest may still need:", "VMware vmxnet3 adapter"} {
		if !strings.Contains(out, want) {
			t.Errorf("header lacks %q", want)
		}
	}
}

// lines returns the lines of out that contain every one of subs.
func lines(out string, subs ...string) []string {
	var r []string
next:
	for _, l := range strings.Split(out, "\n") {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		r = append(r, l)
	}
	return r
}

func checkHyperV(t *testing.T, out string, vm *vmx.VM, disks []Disk) {
	gen := map[string]string{"bios": "1", "efi": "2"}[vm.Firmware]
	if len(lines(out, "Generation = "+gen+";", "MemoryStartupBytes = 6144MB")) != 1 || len(lines(out, "Set-VMProcessor -VM $vm -Count 4")) != 1 {
		t.Errorf("generation %s, memory or processors missing", gen)
	}
	for _, mac := range macs {
		if len(lines(out, "-StaticMacAddress '"+strings.ToUpper(strings.ReplaceAll(mac, ":", ""))+"'")) != 1 {
			t.Errorf("static MAC %s missing", mac)
		}
	}
	boot := lines(out, "$disk0 = Add-VMHardDiskDrive", disks[0].File)
	second := lines(out, "$disk1 = Add-VMHardDiskDrive", disks[1].File)
	if len(boot) != 1 || len(second) != 1 {
		t.Fatalf("disks not attached in boot order:\n%s", out)
	}
	if gen == "1" {
		if !strings.Contains(boot[0], "-ControllerType IDE -ControllerNumber 0 -ControllerLocation 0") || !strings.Contains(second[0], "-ControllerType SCSI") {
			t.Errorf("generation 1 boot disk not on IDE 0:0: %s / %s", boot[0], second[0])
		}
		if len(lines(out, "Set-VMBios -VM $vm -StartupOrder @('IDE'")) != 1 {
			t.Error("no IDE-first BIOS startup order")
		}
	} else {
		if !strings.Contains(boot[0], "-ControllerType SCSI -ControllerNumber 0 -ControllerLocation 0") || len(lines(out, "-FirstBootDevice $disk0")) != 1 {
			t.Errorf("generation 2 boot disk: %s", boot[0])
		}
		want := "-EnableSecureBoot Off"
		if vm.SecureBoot {
			want = "-SecureBootTemplate " + map[string]string{"windows": "MicrosoftWindows", "linux": "MicrosoftUEFICertificateAuthority"}[vm.GuestFamily()]
		}
		if len(lines(out, "Set-VMFirmware", want)) != 1 {
			t.Errorf("Secure Boot line %q missing", want)
		}
	}
}

func checkXe(t *testing.T, out string, vm *vmx.VM, disks []Disk) {
	for _, mac := range macs {
		if len(lines(out, "xe vif-create", "mac="+mac)) != 1 {
			t.Errorf("VIF with MAC %s missing", mac)
		}
	}
	for i, d := range disks {
		if len(lines(out, "xe vdi-create", fmt.Sprintf("virtual-size=%d)", d.Size))) != 1 || len(lines(out, "xe vdi-import", d.File, "format=vhd")) != 1 {
			t.Errorf("disk %s: vdi-create of %d bytes or vdi-import missing", d.File, d.Size)
		}
		if len(lines(out, "xe vbd-create", fmt.Sprintf("device=%d bootable=%v", i, i == 0))) != 1 {
			t.Errorf("disk %d: vbd-create device=%d bootable=%v missing", i, i, i == 0)
		}
	}
	// The VBD of the boot disk follows the import of the boot disk.
	if strings.Index(out, disks[0].File) > strings.Index(out, "device=0 bootable=true") {
		t.Error("boot disk is not the one on device 0")
	}
	fw := map[string]string{"bios": "bios", "efi": "uefi"}[vm.Firmware]
	if len(lines(out, "xe vm-param-set", "HVM-boot-params:firmware="+fw)) != 1 || len(lines(out, "static-min=6442450944 dynamic-min=6442450944 dynamic-max=6442450944 static-max=6442450944")) != 1 ||
		len(lines(out, "VCPUs-max=4")) != 1 || len(lines(out, "platform:cores-per-socket=2")) != 1 {
		t.Error("firmware, memory or vCPUs missing")
	}
	if vm.Firmware == "efi" && len(lines(out, "xe vm-param-set", fmt.Sprintf("platform:secureboot=%v", vm.SecureBoot))) != 1 {
		t.Error("secure boot flag missing")
	}
}

func checkLibvirt(t *testing.T, out string, vm *vmx.VM, disks []Disk) {
	var d lvDomain
	if err := xml.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	if d.Memory.Value != 6144 || d.Memory.Unit != "MiB" || d.VCPU.Value != 4 || d.CPU.Topology.Sockets != 2 || d.CPU.Topology.Cores != 2 {
		t.Errorf("memory/vcpu/topology: %+v %+v %+v", d.Memory, d.VCPU, d.CPU)
	}
	if len(d.Devices.Disks) != len(disks) {
		t.Fatalf("%d disks", len(d.Devices.Disks))
	}
	bus := map[string]string{"windows": "sata", "linux": "virtio"}[vm.GuestFamily()]
	for i, x := range d.Devices.Disks {
		if x.Boot == nil || x.Boot.Order != i+1 || x.Source.File != "/var/lib/libvirt/images/"+disks[i].File || x.Driver.Type != "qcow2" || x.Target.Bus != bus {
			t.Errorf("disk %d: %+v", i, x)
		}
	}
	model := map[string]string{"windows": "e1000e", "linux": "virtio"}[vm.GuestFamily()]
	for i, mac := range macs {
		n := d.Devices.Interfaces[i]
		if n.MAC == nil || n.MAC.Address != mac || n.Model.Type != model || n.Source.Network != "default" {
			t.Errorf("interface %d: %+v", i, n)
		}
	}
	if vm.Firmware == "efi" {
		sb := map[bool]string{true: "yes", false: "no"}[vm.SecureBoot]
		if d.OS.Firmware != "efi" || d.OS.FW == nil || len(lines(out, `name="secure-boot"`, `enabled="`+sb+`"`)) != 1 {
			t.Errorf("EFI firmware: %+v", d.OS)
		}
		if vm.SecureBoot != (d.Features.SMM != nil) {
			t.Error("SMM must be on exactly with Secure Boot")
		}
	} else if d.OS.Firmware != "" {
		t.Errorf("BIOS VM with firmware %q", d.OS.Firmware)
	}
}

func checkProxmox(t *testing.T, out string, vm *vmx.VM, disks []Disk) {
	bus := map[string]string{"windows": "sata", "linux": "scsi"}[vm.GuestFamily()]
	for i, d := range disks {
		if len(lines(out, fmt.Sprintf("qm set \"$VMID\" --%s%d \"$STORAGE:0,import-from=$DIR/\"'%s'", bus, i, d.File))) != 1 {
			t.Errorf("disk %s not imported to %s%d", d.File, bus, i)
		}
	}
	if len(lines(out, fmt.Sprintf("--boot 'order=%s0;%s1'", bus, bus))) != 1 {
		t.Error("boot order missing")
	}
	model := map[string]string{"windows": "e1000e", "linux": "virtio"}[vm.GuestFamily()]
	for i, mac := range macs {
		if len(lines(out, fmt.Sprintf("--net%d 'model=%s,bridge=vmbr0,macaddr=%s'", i, model, strings.ToUpper(mac)))) != 1 {
			t.Errorf("net%d with MAC %s missing", i, mac)
		}
	}
	if len(lines(out, "qm create", "--memory 6144 --sockets 2 --cores 2")) != 1 {
		t.Error("memory/sockets/cores missing")
	}
	if vm.Firmware == "efi" {
		if len(lines(out, "--bios ovmf --efidisk0", fmt.Sprintf("pre-enrolled-keys=%d", map[bool]int{true: 1}[vm.SecureBoot]))) != 1 {
			t.Error("OVMF/EFI disk missing")
		}
	} else if len(lines(out, "--bios seabios")) != 1 {
		t.Error("SeaBIOS missing")
	}
	if (bus == "scsi") != strings.Contains(out, "--scsihw virtio-scsi-single") {
		t.Error("scsihw must be set exactly for the SCSI bus")
	}
}

// TestLibvirtValidates asks libvirt's own schema (virt-xml-validate, from
// libvirt-clients) about every domain the matrix produces, and about the
// option variants.
func TestLibvirtValidates(t *testing.T) {
	tool := oracle.Find(t, "virt-xml-validate")
	oracle.Find(t, "xmllint") // virt-xml-validate runs it (package libxml2-utils)
	dir := t.TempDir()
	n := 0
	// The oracle must be able to say no.
	bad := filepath.Join(dir, "bad.xml")
	if err := os.WriteFile(bad, []byte("<domain type='kvm'><name>x</name><bogus/></domain>"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := oracle.RunErr(t, tool, bad, "domain"); err == nil {
		t.Fatal("virt-xml-validate accepted an invalid domain")
	}
	validate := func(name, text string) {
		p := filepath.Join(dir, name+".xml")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, err := oracle.RunErr(t, tool, p, "domain")
		if err != nil || !strings.Contains(string(stdout)+string(stderr), "validates") {
			t.Errorf("%s: %v\n%s%s\n%s", name, err, stdout, stderr, text)
		}
		n++
	}
	for _, fw := range []string{"bios", "efi"} {
		for c := range controllers {
			vm := matrixVM(t, fw, c)
			for _, o := range []Options{{}, {DiskBus: "scsi", NICModel: "e1000", Networks: map[string]string{"Net 0": "lan"}}, {DiskBus: "ide", ImageDir: "/srv/img"}} {
				if o.DiskBus == "ide" && vm.SecureBoot {
					continue
				}
				out, err := Libvirt(vm, matrixDisks(vm, "raw"), o)
				if err != nil {
					t.Fatal(err)
				}
				validate(fmt.Sprintf("%s-%s-%d", fw, controllers[c].name, n), out)
			}
		}
	}
	t.Logf("%d domains validated", n)
}

func TestRefusals(t *testing.T) {
	bios := func(t *testing.T) *vmx.VM { return matrixVM(t, "bios", 0) }
	efi := func(t *testing.T) *vmx.VM { return matrixVM(t, "efi", 0) }
	tests := []struct {
		name   string
		vm     func(*testing.T) *vmx.VM
		target string
		disks  func(vm *vmx.VM) []Disk
		opts   Options
		reason string
	}{
		{"hyperv gen2 needs vhdx", efi, "hyperv", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "vhd") }, Options{}, "generation 2 VMs (needed for EFI) attach only VHDX"},
		{"hyperv vhd limit", bios, "hyperv", func(vm *vmx.VM) []Disk {
			d := matrixDisks(vm, "vhd")
			d[1].Size = 2041 << 30
			return d
		}, Options{}, "a VHD holds at most 2040 GiB"},
		{"hyperv vhdx limit", efi, "hyperv", func(vm *vmx.VM) []Disk {
			d := matrixDisks(vm, "vhdx")
			d[0].Size = 65 << 40
			return d
		}, Options{}, "a VHDX holds at most 64 TiB"},
		{"hyperv qcow2", bios, "hyperv", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "qcow2") }, Options{}, `format "qcow2" cannot be attached here`},
		{"hyperv efi on gen1", efi, "hyperv", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "vhdx") }, Options{Generation: 1}, "generation 1 has only a BIOS"},
		{"hyperv bios on gen2", bios, "hyperv", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "vhdx") }, Options{Generation: 2}, "generation 2 has only UEFI"},
		{"hyperv 5 IDE disks", manyDisks(5), "hyperv", allDisks("vhdx"), Options{Gen1AllIDE: true}, "generation 1 has 4 IDE locations"},
		{"xe vhd limit", bios, "xe", func(vm *vmx.VM) []Disk {
			d := matrixDisks(vm, "raw")
			d[0].Size = 2041 << 30
			return d
		}, Options{}, "at most 2040 GiB"},
		{"xe qcow2", bios, "xe", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "qcow2") }, Options{}, `format "qcow2"`},
		{"xe 8 NICs", manyNICs(8), "xe", allDisks("vhd"), Options{}, "8 network adapters: XenServer allows 7"},
		{"libvirt vhdx", bios, "libvirt", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "vhdx") }, Options{}, `format "vhdx"`},
		{"libvirt ide secure boot", efi, "libvirt", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "qcow2") }, Options{DiskBus: "ide"}, "Secure Boot needs q35"},
		{"libvirt 5 ide", manyDisks(5), "libvirt", allDisks("raw"), Options{DiskBus: "ide"}, "the IDE bus takes 4"},
		{"libvirt bad bus", bios, "libvirt", func(vm *vmx.VM) []Disk { return matrixDisks(vm, "raw") }, Options{DiskBus: "floppy"}, `disk bus "floppy"`},
		{"proxmox 7 sata", manyDisks(7), "proxmox", allDisks("qcow2"), Options{}, "the sata bus of Proxmox VE takes 6"},
		{"proxmox comma", bios, "proxmox", func(vm *vmx.VM) []Disk {
			d := matrixDisks(vm, "qcow2")
			d[1].File = "a,b.qcow2"
			return d
		}, Options{}, "contains ',' or '='"},
		{"proxmox vmid", bios, "proxmox", allDisks("raw"), Options{VMID: 42}, "IDs start at 100"},
		{"unknown node", bios, "libvirt", func(vm *vmx.VM) []Disk { return []Disk{{Node: "scsi3:3", File: "x", Format: "raw", Size: 1}} }, Options{}, "is not a disk of the VM"},
		{"node twice", bios, "libvirt", func(vm *vmx.VM) []Disk {
			d := matrixDisks(vm, "raw")
			return append(d, d[0])
		}, Options{}, "is given twice"},
		{"zero size", bios, "xe", func(vm *vmx.VM) []Disk {
			d := matrixDisks(vm, "raw")
			d[0].Size = 0
			return d
		}, Options{}, "is not positive"},
		{"no disks", bios, "proxmox", func(vm *vmx.VM) []Disk { return nil }, Options{}, "no converted disk to attach"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := tt.vm(t)
			_, err := Emit(tt.target, vm, tt.disks(vm), tt.opts)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("err = %v, want a refusal saying %q", err, tt.reason)
			}
			var re *RefusedError
			if !errors.As(err, &re) || re.Target != tt.target {
				t.Errorf("err %#v does not name target %s", err, tt.target)
			}
		})
	}
	if _, err := Emit("vbox", bios(t), nil, Options{}); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("unknown target: %v", err)
	}
}

// manyDisks returns a BIOS Windows VM with n SATA/IDE-able disks on SCSI.
func manyDisks(n int) func(*testing.T) *vmx.VM {
	return func(t *testing.T) *vmx.VM {
		var b strings.Builder
		b.WriteString("guestOS = \"windows9-64\"\nmemsize = \"1024\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsilogic\"\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "scsi0:%d.present = \"TRUE\"\nscsi0:%d.fileName = \"d%d.vmdk\"\n", i, i, i)
		}
		f, err := vmx.ParseBytes([]byte(b.String()), "many.vmx")
		if err != nil {
			t.Fatal(err)
		}
		return vmx.Build("many/many.vmx", f, nil)
	}
}

// manyNICs returns a BIOS Linux VM with one disk and n NICs.
func manyNICs(n int) func(*testing.T) *vmx.VM {
	return func(t *testing.T) *vmx.VM {
		var b strings.Builder
		b.WriteString("guestOS = \"ubuntu-64\"\nmemsize = \"1024\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"d.vmdk\"\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "ethernet%d.present = \"TRUE\"\nethernet%d.virtualDev = \"vmxnet3\"\nethernet%d.generatedAddress = \"00:0c:29:00:00:%02x\"\n", i, i, i, i)
		}
		f, err := vmx.ParseBytes([]byte(b.String()), "nics.vmx")
		if err != nil {
			t.Fatal(err)
		}
		return vmx.Build("nics/nics.vmx", f, nil)
	}
}

func allDisks(format string) func(vm *vmx.VM) []Disk {
	return func(vm *vmx.VM) []Disk {
		var out []Disk
		for i, d := range vm.Disks {
			out = append(out, Disk{Node: d.Node, File: fmt.Sprintf("d%d.%s", i, format), Format: format, Size: 1 << 30})
		}
		return out
	}
}
