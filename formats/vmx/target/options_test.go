package target

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
)

func TestGen1AllIDE(t *testing.T) {
	vm := manyDisks(4)(t)
	out, err := HyperV(vm, allDisks("vhd")(vm), Options{Gen1AllIDE: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, loc := range []string{"0 -ControllerLocation 0", "0 -ControllerLocation 1", "1 -ControllerLocation 1", "1 -ControllerLocation 0"} {
		if len(lines(out, fmt.Sprintf("$disk%d = Add-VMHardDiskDrive", i), "-ControllerType IDE -ControllerNumber "+loc, fmt.Sprintf("d%d.vhd", i))) != 1 {
			t.Errorf("disk %d not at IDE %s", i, loc)
		}
	}
	if len(lines(out, "Remove-VMDvdDrive")) != 1 || strings.Contains(out, "Add-VMScsiController") {
		t.Error("the DVD drive must go for the fourth IDE disk, and no SCSI controller is needed")
	}
	// Three IDE disks keep the DVD drive.
	vm = manyDisks(3)(t)
	out, err = HyperV(vm, allDisks("vhd")(vm), Options{Gen1AllIDE: true})
	if err != nil || strings.Contains(out, "Remove-VMDvdDrive") {
		t.Errorf("3 IDE disks: %v, DVD removed: %v", err, strings.Contains(out, "Remove-VMDvdDrive"))
	}
}

func TestHyperVManySCSIDisks(t *testing.T) {
	vm := manyDisks(40)(t) // a BIOS guest with scsi0:0-39
	disks := allDisks("vhdx")(vm)
	// Generation 1: the boot disk on IDE, 39 disks on SCSI controller 0.
	out, err := HyperV(vm, disks, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(lines(out, "-ControllerType SCSI -ControllerNumber 0")); n != 39 {
		t.Errorf("%d SCSI disks, want 39", n)
	}
}

func TestOptionsAndPaths(t *testing.T) {
	vm := matrixVM(t, "efi", 1) // Linux, pvscsi, Secure Boot
	disks := matrixDisks(vm, "qcow2")
	disks[0].File = "/srv/images/boot disk.qcow2"
	opts := Options{Name: "renamed", Networks: map[string]string{"Net 0": "lan0"}, DefaultNetwork: "br-other", DiskBus: "sata", NICModel: "e1000", ImageDir: "/data", VMID: 120, Storage: "ceph"}

	out, err := Libvirt(vm, disks, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`<name>renamed</name>`, `<source file="/srv/images/boot disk.qcow2">`, `<source file="/data/vm-disk1.qcow2">`, `bus="sata"`, `<model type="e1000">`, `<source network="lan0">`, `<source network="br-other">`} {
		if !strings.Contains(out, want) {
			t.Errorf("libvirt output lacks %s", want)
		}
	}
	out, err = Proxmox(vm, disks, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`VMID=${VMID:-120}`, `STORAGE=${STORAGE:-'ceph'}`, `--sata0 "$STORAGE:0,import-from="'/srv/images/boot disk.qcow2'`, `--net0 'model=e1000,bridge=lan0,macaddr=`, `--net1 'model=e1000,bridge=br-other,macaddr=`, "--name 'renamed'"} {
		if !strings.Contains(out, want) {
			t.Errorf("proxmox output lacks %s", want)
		}
	}
	if strings.Contains(out, "scsihw") {
		t.Error("scsihw set without SCSI disks")
	}
	disks = matrixDisks(vm, "vhdx")
	disks[1].File = `D:\Hyper-V\data.vhdx`
	out, err = HyperV(vm, disks, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`-Path 'D:\Hyper-V\data.vhdx'`, `-Path (Join-Path $DiskDir 'vm-disk0.vhdx')`, `'Net 0' = 'lan0'`, `'Net 1' = 'Net 1'`, `[string]$Name = 'renamed'`} {
		if !strings.Contains(out, want) {
			t.Errorf("hyperv output lacks %s", want)
		}
	}
}

// TestHostileNames: names from a .vmx can hold quotes, |0A newlines and
// PowerShell's typographic quotes; none may end a string or a comment.
func TestHostileNames(t *testing.T) {
	text := ".encoding = \"UTF-8\"\ndisplayName = \"x' ; rm -rf / ; echo |22$(id)|22 ‘q’|0Anewline -- -->\"\nguestOS = \"ubuntu-64\"\nmemsize = \"512\"\n" +
		"scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n" +
		"ethernet0.present = \"TRUE\"\nethernet0.networkName = \"net' $(x)\"\nethernet0.generatedAddress = \"00:0c:29:00:00:01\"\nethernet0.virtualDev = \"vmxnet3\"\n"
	f, err := vmx.ParseBytes([]byte(text), "h.vmx")
	if err != nil {
		t.Fatal(err)
	}
	vm := vmx.Build("h/h.vmx", f, nil)
	for _, target := range []string{"hyperv", "xe", "libvirt", "proxmox"} {
		format := map[string]string{"hyperv": "vhdx", "xe": "vhd", "libvirt": "raw", "proxmox": "raw"}[target]
		out, err := Emit(target, vm, []Disk{{Node: "scsi0:0", File: "it's here.img", Format: format, Size: 1 << 30}}, Options{})
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		if strings.Contains(out, "\nnewline") {
			t.Errorf("%s: a newline from the name reached the output", target)
		}
		switch target {
		case "hyperv":
			if !strings.Contains(out, `'x'' ; rm -rf / ; echo "$(id)" ‘‘q’’_newline -- -->'`) {
				t.Errorf("hyperv quoting:\n%s", out)
			}
		case "xe":
			if !strings.Contains(out, `NAME=${NAME:-'x'\'' ; rm -rf / ; echo "$(id)" ‘q’_newline -- -->'}`) {
				t.Errorf("xe quoting:\n%s", out)
			}
			if sh, err := exec.LookPath("sh"); err == nil {
				if msg, err := exec.Command(sh, "-n", "-c", out).CombinedOutput(); err != nil {
					t.Errorf("sh -n: %v %s", err, msg)
				}
			}
		case "libvirt":
			body := out[strings.Index(out, "-->\n")+4:]
			head := out[:strings.Index(out, "-->\n")]
			if strings.Contains(head[4:], "--") || !strings.Contains(body, "<name>x&#39; ; rm -rf _ ; echo &#34;$(id)&#34; ‘q’_newline -- --&gt;</name>") {
				t.Errorf("libvirt escaping:\n%s", out)
			}
		case "proxmox":
			if !strings.Contains(out, "--name 'x-rm-rf-echo-id-q-newline'") {
				t.Errorf("proxmox name:\n%s", out)
			}
			if sh, err := exec.LookPath("sh"); err == nil {
				if msg, err := exec.Command(sh, "-n", "-c", out).CombinedOutput(); err != nil {
					t.Errorf("sh -n: %v %s", err, msg)
				}
			}
		}
	}
}

// TestProductsToTargets runs the VMs of ../testdata through every target.
func TestProductsToTargets(t *testing.T) {
	for _, name := range []string{"esxi65-lsisas-bios", "esxi67-pvscsi-efi", "esxi70-nvme-efi-secureboot", "esxi80-sata-bios", "ws-linux-host", "ws-windows-host", "fusion-macos"} {
		vm := testdataVM(t, name)
		for _, target := range Names() {
			format := map[string]string{"hyperv": "vhdx", "xe": "vhd", "libvirt": "qcow2", "proxmox": "qcow2"}[target]
			var disks []Disk
			for i, d := range vm.Disks {
				disks = append(disks, Disk{Node: d.Node, File: fmt.Sprintf("%s-%d.%s", name, i, format), Format: format, Size: int64(i+1) << 30})
			}
			out, err := Emit(target, vm, disks, Options{})
			if target == "hyperv" && vm.Firmware == "bios" && err == nil && !strings.Contains(out, "Generation = 1;") {
				t.Errorf("%s/%s: BIOS VM not on generation 1", name, target)
			}
			if err != nil {
				t.Errorf("%s/%s: %v", name, target, err)
				continue
			}
			for _, p := range vm.Problems {
				if !strings.Contains(out, clean(p)) && !strings.Contains(out, strings.ReplaceAll(clean(p), "--", "- -")) {
					t.Errorf("%s/%s: problem %q is not in the header", name, target, p)
				}
			}
			for _, n := range vm.NICs {
				if n.MAC != "" && !strings.Contains(strings.ToLower(strings.ReplaceAll(out, ":", "")), strings.ReplaceAll(n.MAC, ":", "")) {
					t.Errorf("%s/%s: MAC %s missing", name, target, n.MAC)
				}
			}
		}
	}
}

func TestPVEOSType(t *testing.T) {
	for g, want := range map[string]string{
		"windows11-64": "win11", "windows2019srvNext-64": "win11", "windows2022srvNext-64": "win11", "windows9-64": "win10", "windows9srv-64": "win10",
		"windows2019srv-64": "win10", "windows8srv-64": "win8", "windows7-64": "win7", "windows7srv-64": "win7", "longhorn-64": "w2k8",
		"winVista": "w2k8", "winNetEnterprise": "w2k3", "winXPPro": "wxp", "win2000Serv": "w2k", "win31": "win10",
		"ubuntu-64": "l26", "other24xLinux": "l24", "other26xLinux-64": "l26", "solaris11-64": "solaris", "freebsd13-64": "other", "": "other",
	} {
		if got := pveOSType(g); got != want {
			t.Errorf("pveOSType(%q) = %q, want %q", g, got, want)
		}
	}
	if dnsName("--") != "vm" || dnsName("a b_c.d") != "a-b-c.d" {
		t.Errorf("dnsName: %q %q", dnsName("--"), dnsName("a b_c.d"))
	}
}
