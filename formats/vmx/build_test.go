package vmx

import (
	"slices"
	"strings"
	"testing"
)

func build(t *testing.T, vmxText, vmsdText string) *VM {
	t.Helper()
	f, err := ParseBytes([]byte(vmxText), "d/t.vmx")
	if err != nil {
		t.Fatal(err)
	}
	var s *File
	if vmsdText != "" {
		if s, err = ParseBytes([]byte(vmsdText), "d/t.vmsd"); err != nil {
			t.Fatal(err)
		}
	}
	return Build("d/t.vmx", f, s)
}

func nodes(vm *VM) []string {
	var out []string
	for _, d := range vm.Disks {
		out = append(out, d.Node)
	}
	return out
}

func TestBuildDefaultsAndProblems(t *testing.T) {
	tests := []struct {
		name     string
		vmx      string
		disks    []string // nodes in boot order
		problems []string // substrings
		check    func(t *testing.T, vm *VM)
	}{
		{
			name:     "empty vmx: VMware's defaults",
			vmx:      "",
			problems: []string{"guestOS is absent", "memSize is absent; VMware's default of 32 MiB"},
			check: func(t *testing.T, vm *VM) {
				if vm.Name != "t" || vm.Firmware != "bios" || vm.CPUs != 1 || vm.CoresPerSocket != 1 || vm.MemoryMiB != 32 || vm.Sockets() != 1 {
					t.Errorf("defaults: %+v", vm)
				}
				if len(vm.Controllers) != 2 || vm.Controllers[0].Name != "ide0" {
					t.Errorf("controllers %+v, want ide0 and ide1", vm.Controllers)
				}
			},
		},
		{
			name: "controller without present is absent; device without present is absent",
			vmx: "guestOS = \"other\"\nmemsize = \"64\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n" +
				"sata0.present = \"TRUE\"\nsata0:0.fileName = \"b.vmdk\"\nsata0:1.present = \"false\"\nsata0:1.fileName = \"c.vmdk\"\nsata0:2.present = \"TRUE\"\nsata0:2.fileName = \"d.vmdk\"\n",
			disks:    []string{"sata0:2"},
			problems: []string{"d/t.vmx line 4: scsi0:0 is present but its controller scsi0 is not; skipped"},
		},
		{
			name:     "ide needs no controller key; ide.present FALSE removes it",
			vmx:      "guestOS = \"other\"\nmemsize = \"64\"\nide0:0.present = \"TRUE\"\nide0:0.fileName = \"a.vmdk\"\nide1.present = \"FALSE\"\nide1:0.present = \"TRUE\"\nide1:0.fileName = \"b.vmdk\"\n",
			disks:    []string{"ide0:0"},
			problems: []string{"ide1:0 is present but its controller ide1 is not"},
		},
		{
			name:     "scsi without virtualDev is buslogic",
			vmx:      "guestOS = \"other\"\nmemsize = \"64\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n",
			disks:    []string{"scsi0:0"},
			problems: []string{"scsi0.virtualDev is absent; buslogic assumed"},
			check: func(t *testing.T, vm *VM) {
				if vm.Disks[0].ControllerType != "buslogic" {
					t.Errorf("controller type %q", vm.Disks[0].ControllerType)
				}
			},
		},
		{
			name: "default boot order: IDE, SCSI by number and unit, SATA, NVMe",
			vmx: "guestOS = \"other\"\nmemsize = \"64\"\nnvme0.present = \"TRUE\"\nnvme0:0.present = \"TRUE\"\nnvme0:0.fileName = \"n.vmdk\"\n" +
				"sata0.present = \"TRUE\"\nsata0:0.present = \"TRUE\"\nsata0:0.fileName = \"s.vmdk\"\n" +
				"scsi1.present = \"TRUE\"\nscsi1.virtualDev = \"lsilogic\"\nscsi1:0.present = \"TRUE\"\nscsi1:0.fileName = \"c10.vmdk\"\n" +
				"scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsilogic\"\nscsi0:10.present = \"TRUE\"\nscsi0:10.fileName = \"c010.vmdk\"\nscsi0:2.present = \"TRUE\"\nscsi0:2.fileName = \"c02.vmdk\"\n" +
				"ide1:1.present = \"TRUE\"\nide1:1.fileName = \"i11.vmdk\"\n",
			disks:    []string{"ide1:1", "scsi0:2", "scsi0:10", "scsi1:0", "sata0:0", "nvme0:0"},
			problems: []string{"disks on 4 kinds of controller and no bios.hddOrder: ide1:1 is taken as the boot disk"},
		},
		{
			name: "bios.hddOrder first, in its order, then the default",
			vmx: "guestOS = \"other\"\nmemsize = \"64\"\nbios.bootOrder = \"ethernet0, HDD,cdrom\"\nbios.hddOrder = \"SCSI0:1,sata0:0\"\n" +
				"sata0.present = \"TRUE\"\nsata0:0.present = \"TRUE\"\nsata0:0.fileName = \"s.vmdk\"\n" +
				"scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\nscsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"b.vmdk\"\n",
			disks: []string{"scsi0:1", "sata0:0", "scsi0:0"},
			check: func(t *testing.T, vm *VM) {
				if !slices.Equal(vm.BootOrder, []string{"ethernet0", "hdd", "cdrom"}) {
					t.Errorf("boot order %q", vm.BootOrder)
				}
				if len(vm.Problems) != 0 {
					t.Errorf("problems %q", vm.Problems)
				}
			},
		},
		{
			name: "modes, raw disks, unknown devices, bad values",
			vmx: "guestOS = \"windows9-64\"\nmemsize = \"lots\"\nnumvcpus = \"6\"\ncpuid.coresPerSocket = \"4\"\nfirmware = \"coreboot\"\n" +
				"scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsilogic\"\nscsi0.sharedBus = \"physical\"\n" +
				"scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\nscsi0:0.mode = \"independent-nonpersistent\"\n" +
				"scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"/dev/sdb\"\nscsi0:1.deviceType = \"rawDisk\"\n" +
				"scsi0:2.present = \"TRUE\"\nscsi0:2.deviceType = \"scsi-passthru\"\nscsi0:2.fileName = \"/dev/sg2\"\n" +
				"scsi0:3.present = \"yes please\"\nscsi0:3.fileName = \"x.vmdk\"\n" +
				"scsi0:4.present = \"TRUE\"\n" +
				"ethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vmxnet3\"\nethernet0.addressType = \"static\"\nethernet0.address = \"00:50:56:zz:00:01\"\n",
			disks: []string{"scsi0:0", "scsi0:1"},
			problems: []string{
				`memSize = "lots" is not a number`, "6 vCPUs are not a multiple of 4 cores per socket",
				`firmware "coreboot" is not bios or efi`, "scsi0 shares its bus (physical)",
				"scsi0:0 is independent-nonpersistent", "scsi0:1 is a raw host disk",
				`scsi0:2: device type "scsi-passthru" is neither a disk nor a CD-ROM`,
				`scsi0:3.present = "yes please" is not TRUE or FALSE`, "disk scsi0:4 has no fileName",
				`ethernet0.address = "00:50:56:zz:00:01" is not a MAC address`,
			},
			check: func(t *testing.T, vm *VM) {
				if vm.MemoryMiB != 32 || vm.CoresPerSocket != 1 || vm.Sockets() != 6 || vm.Firmware != "bios" {
					t.Errorf("mem %d cores %d sockets %d firmware %s", vm.MemoryMiB, vm.CoresPerSocket, vm.Sockets(), vm.Firmware)
				}
				if !vm.Disks[1].Raw || vm.Disks[0].Mode != "independent-nonpersistent" {
					t.Errorf("disks %+v", vm.Disks)
				}
				if vm.NICs[0].MAC != "" {
					t.Errorf("MAC %q", vm.NICs[0].MAC)
				}
			},
		},
		{
			name:  "secure boot is ignored without EFI; iso without deviceType is a CD",
			vmx:   "guestOS = \"other\"\nmemsize = \"64\"\nuefi.secureBoot.enabled = \"TRUE\"\nide1:0.present = \"TRUE\"\nide1:0.fileName = \"x.ISO\"\n",
			disks: nil,
			check: func(t *testing.T, vm *VM) {
				if vm.SecureBoot || len(vm.CDROMs) != 1 || vm.CDROMs[0].Node != "ide1:0" {
					t.Errorf("secure boot %v, cdroms %+v", vm.SecureBoot, vm.CDROMs)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := build(t, tt.vmx, "")
			if got := nodes(vm); !slices.Equal(got, tt.disks) {
				t.Errorf("disks %q, want %q", got, tt.disks)
			}
			all := strings.Join(vm.Problems, "\n")
			for _, p := range tt.problems {
				if !strings.Contains(all, p) {
					t.Errorf("no problem mentions %q; problems:\n%s", p, all)
				}
			}
			if tt.check != nil {
				tt.check(t, vm)
			}
		})
	}
}

func TestGuestFamily(t *testing.T) {
	for g, want := range map[string]string{
		"windows9-64": "windows", "winXPPro": "windows", "longhorn-64": "windows", "windows2019srvNext-64": "windows",
		"ubuntu-64": "linux", "rhel9-64": "linux", "other5xlinux-64": "linux", "otherLinux": "linux", "vmware-photon-64": "linux", "centos7-64": "linux",
		"freebsd13-64": "other", "darwin21-64": "other", "solaris11-64": "other", "other": "other", "": "other",
	} {
		if got := GuestFamily(g); got != want {
			t.Errorf("GuestFamily(%q) = %q, want %q", g, got, want)
		}
	}
}

func TestIs64BitAndSockets(t *testing.T) {
	if !Is64Bit("windows9-64") || !Is64Bit("UBUNTU-64") || Is64Bit("winXPPro") || Is64Bit("") {
		t.Error("Is64Bit")
	}
	for _, tt := range []struct{ cpus, cores, want int }{{8, 4, 2}, {6, 4, 6}, {1, 1, 1}, {0, 0, 1}, {4, 0, 4}} {
		vm := &VM{CPUs: tt.cpus, CoresPerSocket: tt.cores}
		if got := vm.Sockets(); got != tt.want {
			t.Errorf("Sockets(%d cpus, %d cores) = %d, want %d", tt.cpus, tt.cores, got, tt.want)
		}
	}
}
