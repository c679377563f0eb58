package vmx

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// loadTestdata parses testdata/<name>.vmx (and .vmsd when present) as if
// the VM were in folder dir of its FS.
func loadTestdata(t *testing.T, name, dir string) *VM {
	t.Helper()
	vmx := parseTestdata(t, name+".vmx")
	var vmsd *File
	if _, err := os.Stat(filepath.Join("testdata", name+".vmsd")); err == nil {
		vmsd = parseTestdata(t, name+".vmsd")
	}
	return Build(dir+"/"+name+".vmx", vmx, vmsd)
}

func parseTestdata(t *testing.T, file string) *File {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseBytes(data, file)
	if err != nil {
		t.Fatalf("ParseBytes(%s): %v", file, err)
	}
	return f
}

type wantDisk struct {
	Node, Bus, Type, Path, Datastore, HostPath, Mode string
}

type wantNIC struct {
	Name, Model, MAC, AddressType, Network string
}

func TestBuildProducts(t *testing.T) {
	tests := []struct {
		file        string // testdata base name
		name, guest string
		family      string
		firmware    string
		secureBoot  bool
		cpus, cores int
		mem         int64
		hw          int
		controllers []string
		disks       []wantDisk // in boot order
		cdroms      []string
		nics        []wantNIC
		unmapped    []string
		problems    []string // substrings, each must appear in some problem
		noProblems  bool
	}{
		{
			file: "esxi65-lsisas-bios", name: "sql01", guest: "windows8srv-64", family: "windows", firmware: "bios",
			cpus: 4, cores: 2, mem: 8192, hw: 13,
			controllers: []string{"ide0/ide", "ide1/ide", "scsi0/lsisas1068"},
			disks: []wantDisk{
				{"scsi0:0", "scsi", "lsisas1068", "vm/sql01.vmdk", "", "", "persistent"},
				{"scsi0:1", "scsi", "lsisas1068", "sql01/sql01_1.vmdk", "5a4b3c2d-11223344-aabb-001122334455", "", "persistent"},
				{"scsi0:2", "scsi", "lsisas1068", "vm/sql01_2.vmdk", "", "", "independent-persistent"},
			},
			cdroms:     []string{"ide1:0/atapi-cdrom"},
			nics:       []wantNIC{{"ethernet0", "e1000e", "00:50:56:9a:1b:2c", "vpx", "VM Network"}},
			noProblems: true,
		},
		{
			file: "esxi67-pvscsi-efi", name: "app02", guest: "rhel7-64", family: "linux", firmware: "efi",
			cpus: 4, cores: 2, mem: 16384, hw: 14,
			controllers: []string{"ide0/ide", "ide1/ide", "scsi0/pvscsi", "sata0/ahci"},
			disks: []wantDisk{
				{"scsi0:0", "scsi", "pvscsi", "vm/app02.vmdk", "", "", "persistent"},
				{"scsi0:1", "scsi", "pvscsi", "vm/app02_1.vmdk", "", "", "persistent"},
			},
			cdroms: []string{"sata0:0/cdrom-image"},
			nics: []wantNIC{
				{"ethernet0", "vmxnet3", "00:50:56:9b:00:01", "vpx", "Prod VLAN 20"},
				{"ethernet1", "vmxnet3", "00:50:56:3f:00:02", "static", "Backup"},
			},
			unmapped:   []string{"usb_xhci"},
			noProblems: true,
		},
		{
			file: "esxi70-nvme-efi-secureboot", name: `dc01 "primary"`, guest: "windows2019srv-64", family: "windows", firmware: "efi", secureBoot: true,
			cpus: 8, cores: 4, mem: 32768, hw: 17,
			controllers: []string{"ide0/ide", "ide1/ide", "sata0/ahci", "nvme0/nvme"},
			disks: []wantDisk{
				{"nvme0:0", "nvme", "nvme", "vm/dc01.vmdk", "", "", "persistent"},
				{"nvme0:1", "nvme", "nvme", "vm/dc01_1.vmdk", "", "", "persistent"},
			},
			cdroms:     []string{"sata0:0/cdrom-raw"},
			nics:       []wantNIC{{"ethernet0", "vmxnet3", "00:50:56:a1:b2:c3", "vpx", "Servers"}},
			unmapped:   []string{"vtpm"},
			noProblems: true,
		},
		{
			file: "esxi80-sata-bios", name: "web03", guest: "ubuntu-64", family: "linux", firmware: "bios",
			cpus: 2, cores: 1, mem: 4096, hw: 20,
			controllers: []string{"ide0/ide", "ide1/ide", "sata0/ahci"},
			disks:       []wantDisk{{"sata0:0", "sata", "ahci", "vm/web03-000006.vmdk", "", "", "persistent"}},
			cdroms:      []string{"sata0:1/cdrom-image"},
			nics:        []wantNIC{{"ethernet0", "vmxnet3", "00:0c:29:12:34:56", "generated", "DMZ"}},
			noProblems:  true,
		},
		{
			file: "ws-linux-host", name: "Debian 10", guest: "debian10-64", family: "linux", firmware: "bios",
			cpus: 2, cores: 1, mem: 2048, hw: 8,
			controllers: []string{"ide0/ide", "ide1/ide", "scsi0/lsilogic"},
			disks: []wantDisk{
				{"ide0:0", "ide", "ide", "vm/Debian 10.vmdk", "", "/home/jo/vmware/Debian 10/Debian 10.vmdk", "persistent"},
				{"scsi0:0", "scsi", "lsilogic", "vm/data.vmdk", "", "", "persistent"},
			},
			cdroms:   []string{"ide1:0/cdrom-raw"},
			nics:     []wantNIC{{"ethernet0", "e1000", "00:0c:29:ab:cd:ef", "generated", "bridged"}},
			unmapped: []string{"ehci", "sound", "usb"},
			problems: []string{"2 kinds of controller", "ide0:0 is taken as the boot disk"},
		},
		{
			file: "ws-windows-host", name: `Büro PC "Jo"`, guest: "windows9-64", family: "windows", firmware: "efi",
			cpus: 2, cores: 2, mem: 4096, hw: 19,
			controllers: []string{"ide0/ide", "ide1/ide", "sata0/ahci", "nvme0/nvme"},
			disks: []wantDisk{
				{"nvme0:0", "nvme", "nvme", "vm/Windows 10 x64.vmdk", "", "", "persistent"},
				{"nvme0:1", "nvme", "nvme", "vm/Daten.vmdk", "", `D:\VMs\Shared\Daten.vmdk`, "persistent"},
			},
			cdroms:     []string{"sata0:1/cdrom-image"},
			nics:       []wantNIC{{"ethernet0", "e1000e", "00:0c:29:5a:6b:7c", "generated", "nat"}},
			unmapped:   []string{"ehci", "sound", "usb", "usb_xhci"},
			noProblems: true,
		},
		{
			file: "fusion-macos", name: "Ubuntu 64-bit 20.04", guest: "ubuntu-64", family: "linux", firmware: "efi",
			cpus: 2, cores: 1, mem: 4096, hw: 18,
			controllers: []string{"ide0/ide", "ide1/ide", "scsi0/lsilogic", "sata0/ahci"},
			disks: []wantDisk{
				{"scsi0:0", "scsi", "lsilogic", "vm/Virtual Disk.vmdk", "", "", "persistent"},
				{"scsi0:1", "scsi", "lsilogic", "vm/shared disk.vmdk", "", "/Users/jo/Virtual Machines.localized/shared disk.vmdk", "persistent"},
			},
			cdroms:   []string{"sata0:1/cdrom-image"},
			nics:     []wantNIC{{"ethernet0", "vmxnet3", "", "generated", "nat"}},
			unmapped: []string{"ehci", "serial0", "usb", "usb_xhci"},
			problems: []string{"fusion-macos.vmx line 31: ethernet0 has no MAC address yet"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			vm := loadTestdata(t, tt.file, "vm")
			if vm.Name != tt.name || vm.GuestOS != tt.guest || vm.GuestFamily() != tt.family {
				t.Errorf("name/guest/family = %q/%q/%q, want %q/%q/%q", vm.Name, vm.GuestOS, vm.GuestFamily(), tt.name, tt.guest, tt.family)
			}
			if vm.Firmware != tt.firmware || vm.SecureBoot != tt.secureBoot {
				t.Errorf("firmware %s secure boot %v, want %s %v", vm.Firmware, vm.SecureBoot, tt.firmware, tt.secureBoot)
			}
			if vm.CPUs != tt.cpus || vm.CoresPerSocket != tt.cores || vm.MemoryMiB != tt.mem || vm.HWVersion != tt.hw {
				t.Errorf("cpus %d cores %d mem %d hw %d, want %d %d %d %d", vm.CPUs, vm.CoresPerSocket, vm.MemoryMiB, vm.HWVersion, tt.cpus, tt.cores, tt.mem, tt.hw)
			}
			var ctls []string
			for _, c := range vm.Controllers {
				ctls = append(ctls, c.Name+"/"+c.Type)
			}
			if !slices.Equal(ctls, tt.controllers) {
				t.Errorf("controllers %q, want %q", ctls, tt.controllers)
			}
			var disks []wantDisk
			for _, d := range vm.Disks {
				disks = append(disks, wantDisk{d.Node, d.Bus, d.ControllerType, d.Path, d.Datastore, d.HostPath, d.Mode})
			}
			if !reflect.DeepEqual(disks, tt.disks) {
				t.Errorf("disks\n got %+v\nwant %+v", disks, tt.disks)
			}
			var cds []string
			for _, c := range vm.CDROMs {
				cds = append(cds, c.Node+"/"+c.DeviceType)
			}
			if !slices.Equal(cds, tt.cdroms) {
				t.Errorf("cdroms %q, want %q", cds, tt.cdroms)
			}
			var nics []wantNIC
			for _, n := range vm.NICs {
				nics = append(nics, wantNIC{n.Name, n.Model, n.MAC, n.AddressType, n.Network})
			}
			if !reflect.DeepEqual(nics, tt.nics) {
				t.Errorf("nics\n got %+v\nwant %+v", nics, tt.nics)
			}
			if !slices.Equal(vm.Unmapped, tt.unmapped) {
				t.Errorf("unmapped %q, want %q", vm.Unmapped, tt.unmapped)
			}
			all := strings.Join(vm.Problems, "\n")
			for _, p := range tt.problems {
				if !strings.Contains(all, p) {
					t.Errorf("no problem mentions %q; problems:\n%s", p, all)
				}
			}
			if tt.noProblems && len(vm.Problems) > 0 {
				t.Errorf("unexpected problems:\n%s", all)
			}
		})
	}
}
