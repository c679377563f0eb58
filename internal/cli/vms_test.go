package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

// Issue 14: VMs on generated datastores — BIOS and EFI; SCSI, SATA, NVMe
// and IDE disks; a VM reverted to an older snapshot, so that the point it
// runs on is not the longest chain's leaf; a disk on a second datastore; a
// VM that looks powered on.

func vmDatastores(t *testing.T) (ds1, ds2 datastore) {
	t.Helper()
	ds2 = buildDatastore(t, testimages.Spec{VMFS: 5, Seed: 141, Label: "ds2",
		Disks: []testimages.DiskSpec{{Path: "db01/db01_data.vmdk", Type: testimages.Thin, Size: 12 << 20, Fill: 40}}})
	ds1 = buildDatastore(t, testimages.Spec{VMFS: 6, Seed: 140, Label: "ds1", VMs: []testimages.VMSpec{
		{
			Name: "web01", GuestOS: "windows2019srv-64", Firmware: "efi", SecureBoot: true, CPUs: 4, CoresPerSocket: 2, MemoryMiB: 8192,
			Disks: []testimages.VMDiskSpec{
				{Node: "scsi0:0", ControllerType: "pvscsi", Type: testimages.Thin, Size: 32 << 20, Fill: 30},
				{Node: "scsi0:1", ControllerType: "pvscsi", Type: testimages.Eager, Size: 8 << 20, Fill: 50},
			},
			NICs: []testimages.VMNICSpec{{Model: "vmxnet3", MAC: "00:50:56:9a:10:01", Network: "VM Network"}},
			Ops: []testimages.VMOp{
				{Snapshot: "before patch", Fill: 5},
				{Snapshot: "patched", Fill: 3},
				{Revert: "before patch", Fill: 2},
			},
		},
		{
			Name: "db01", GuestOS: "rhel8-64", CPUs: 2, MemoryMiB: 4096,
			Disks: []testimages.VMDiskSpec{
				{Node: "sata0:0", Type: testimages.Lazy, Size: 16 << 20, Fill: 40},
				{Node: "nvme0:0", Type: testimages.Thin, Size: 16 << 20, Fill: 20},
				{Node: "scsi0:1", ControllerType: "lsilogic", Datastore: "ds2", Path: "db01/db01_data.vmdk", Size: 12 << 20},
			},
			NICs: []testimages.VMNICSpec{
				{Model: "e1000e", MAC: "00:0c:29:ab:cd:01", Network: "Prod"},
				{Model: "vmxnet3", MAC: "00:50:56:00:00:42", Network: "Backup", Static: true},
			},
			Ops: []testimages.VMOp{{Snapshot: "nightly", Fill: 4}},
		},
		{
			Name: "legacy", GuestOS: "winXPPro", MemoryMiB: 512, Running: true,
			Disks: []testimages.VMDiskSpec{{Node: "ide0:0", Type: testimages.Thin, Size: 8 << 20, Fill: 60}},
			NICs:  []testimages.VMNICSpec{{Model: "e1000", MAC: "00:0c:29:11:22:33", Network: "VM Network"}},
		},
	}})
	return ds1, ds2
}

func TestVMsMatchManifest(t *testing.T) {
	ds1, _ := vmDatastores(t)
	code, out, stderr := runCLI(t, "vms", "--json", ds1.volume)
	if code != 0 {
		t.Fatalf("vms: exit %d: %s", code, stderr)
	}
	var got []vmJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	byName := map[string]vmJSON{}
	for _, g := range got {
		byName[g.Name] = g
	}
	if len(got) != len(ds1.m.VMs) {
		t.Errorf("vms lists %d VMs, the manifest %d", len(got), len(ds1.m.VMs))
	}
	disks := map[string]testimages.ManifestDisk{}
	for _, d := range ds1.m.Disks {
		disks[d.Path] = d
	}
	for _, want := range ds1.m.VMs {
		g, ok := byName[want.Name]
		if !ok {
			t.Errorf("%s: not listed", want.Name)
			continue
		}
		if g.VMX != want.VMX || g.GuestOS != want.GuestOS || g.Firmware != want.Firmware || g.SecureBoot != want.SecureBoot ||
			g.CPUs != want.CPUs || g.MemoryMiB != want.MemoryMiB || g.CurrentSnapshot != want.CurrentSnapshot || g.Running != want.Running {
			t.Errorf("%s: got %+v\nwant %+v", want.Name, g, want)
		}
		if len(g.Disks) != len(want.Disks) {
			t.Errorf("%s: %d disks, want %d", want.Name, len(g.Disks), len(want.Disks))
			continue
		}
		for i, w := range want.Disks {
			d := g.Disks[i]
			if d.Controller != w.Controller || d.Bus != w.Bus || d.Unit != w.Unit || d.ControllerType != w.ControllerType ||
				d.Path != w.Path || d.Datastore != w.Datastore || !slices.Equal(d.Chain, w.Chain) || d.Mode != w.Mode {
				t.Errorf("%s disk %d (boot order): got %+v\nwant %+v", want.Name, i, d, w)
			}
			if w.Datastore == "" {
				md := disks[w.Path]
				if d.VirtualSize != w.VirtualSize || d.Allocated != md.Allocated || !d.Convertible {
					t.Errorf("%s disk %d: size %d allocated %d convertible %v; want %d %d true", want.Name, i, d.VirtualSize, d.Allocated, d.Convertible, w.VirtualSize, md.Allocated)
				}
			}
		}
		var nics []testimages.ManifestVMNIC
		for _, n := range g.NICs {
			nics = append(nics, testimages.ManifestVMNIC{Model: n.Model, MAC: n.MAC, Network: n.Network})
		}
		if !slices.Equal(nics, want.NICs) {
			t.Errorf("%s: NICs %+v, want %+v", want.Name, nics, want.NICs)
		}
		var snaps []testimages.ManifestVMSnap
		for _, s := range g.Snapshots {
			snaps = append(snaps, testimages.ManifestVMSnap{Name: s.Name, UID: s.UID, Parent: s.Parent})
		}
		if len(snaps) != len(want.Snapshots) || (len(snaps) > 0 && !slices.Equal(snaps, want.Snapshots)) {
			t.Errorf("%s: snapshots %+v, want %+v", want.Name, snaps, want.Snapshots)
		}
	}
	// The point each VM runs on: web01 was reverted, so its disks are new
	// deltas on the base, not the leaf of the longest chain.
	web := byName["web01"]
	if len(web.Disks) > 0 && (web.Disks[0].Path != "web01/web01-000003.vmdk" || len(web.Disks[0].Chain) != 2) {
		t.Errorf("web01 runs on %s (chain %v), want web01-000003.vmdk on the base", web.Disks[0].Path, web.Disks[0].Chain)
	}
	problems := strings.Join(byName["db01"].Problems, "\n")
	if !strings.Contains(problems, "datastore ds2") || !strings.Contains(problems, "--datastore ds2=VOLUME") {
		t.Errorf("db01's disk on ds2 is not reported:\n%s", problems)
	}
	if lg := byName["legacy"]; !lg.Running || !strings.Contains(strings.Join(lg.RunningHints, " "), ".vswp") {
		t.Errorf("legacy: running %v hints %v", lg.Running, lg.RunningHints)
	}
	// The human listing names every VM.
	code, out, stderr = runCLI(t, "vms", ds1.volume)
	for _, vm := range ds1.m.VMs {
		if code != 0 || !strings.Contains(out, vm.Name) {
			t.Errorf("vms: exit %d, %s not in:\n%s%s", code, vm.Name, out, stderr)
		}
	}
}

// convert --vm converts exactly the disks and chain points the .vmx names
// (or a snapshot's), in boot order, byte-identical to the manifest.
func TestConvertVM(t *testing.T) {
	ds1, ds2 := vmDatastores(t)
	sha := map[string]string{}
	for _, d := range append(slices.Clone(ds1.m.Disks), ds2.m.Disks...) {
		sha[d.Path] = d.SHA256
	}
	vms := map[string]testimages.ManifestVM{}
	for _, vm := range ds1.m.VMs {
		vms[vm.Name] = vm
	}
	check := func(t *testing.T, dir, vm string, want []string) {
		t.Helper()
		for i, p := range want {
			o := filepath.Join(dir, vm+"_disk"+string(rune('0'+i))+".raw")
			if _, err := os.Stat(o); err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			if got := sha256File(t, o); got != sha[p] {
				t.Errorf("%s (%s): sha256 %s, want %s", o, p, got, sha[p])
			}
		}
		if extra, _ := filepath.Glob(filepath.Join(dir, vm+"_disk"+string(rune('0'+len(want)))+".*")); len(extra) > 0 {
			t.Errorf("more outputs than disks: %v", extra)
		}
	}
	t.Run("current", func(t *testing.T) {
		dir := t.TempDir()
		code, _, stderr := runCLI(t, "convert", "-q", "--vm", "web01", "-f", "raw", "--out-dir", dir, ds1.volume)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		check(t, dir, "web01", []string{vms["web01"].Disks[0].Path, vms["web01"].Disks[1].Path})
	})
	t.Run("snapshot", func(t *testing.T) {
		dir := t.TempDir()
		code, _, stderr := runCLI(t, "convert", "-q", "--vm", "web01/web01.vmx", "--snapshot", "patched", "-f", "raw", "--out-dir", dir, ds1.volume)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		w := vms["web01"]
		check(t, dir, "web01", []string{w.Disks[0].Snapshots["patched"], w.Disks[1].Snapshots["patched"]})
	})
	t.Run("other-datastore", func(t *testing.T) {
		dir := t.TempDir()
		code, _, stderr := runCLI(t, "convert", "-q", "--vm", "db01", "-f", "raw", "--out-dir", dir, ds1.volume)
		if code == 0 || !strings.Contains(stderr, "--datastore ds2=VOLUME") {
			t.Errorf("without --datastore: exit %d, %s", code, stderr)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) > 0 {
			t.Errorf("a refused VM left %v", left)
		}
		code, _, stderr = runCLI(t, "convert", "-q", "--vm", "db01", "--datastore", "ds2="+ds2.volume, "-f", "raw", "--out-dir", dir, ds1.volume)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		w := vms["db01"]
		check(t, dir, "db01", []string{w.Disks[0].Path, w.Disks[1].Path, w.Disks[2].Path})
	})
	t.Run("targets", func(t *testing.T) {
		for _, tc := range []struct {
			target, vm, file, format string
			want                     []string
		}{
			{"hyperv", "web01", "web01_create-vm.ps1", "vhdx", []string{"Generation = 2", "0050569A1001", "web01_disk0.vhdx", "MicrosoftWindows"}},
			{"libvirt", "legacy", "legacy_domain.xml", "qcow2", []string{"00:0c:29:11:22:33", "legacy_disk0.qcow2"}},
			{"xe", "legacy", "legacy_create-vm-xe.sh", "vhd", []string{"00:0c:29:11:22:33", "legacy_disk0.vhd"}},
			{"proxmox", "web01", "web01_create-vm-qm.sh", "qcow2", []string{"00:50:56:9a:10:01", "ovmf"}},
		} {
			t.Run(tc.target, func(t *testing.T) {
				dir := t.TempDir()
				code, _, stderr := runCLI(t, "convert", "-q", "--vm", tc.vm, "--target", tc.target, "--out-dir", dir, ds1.volume)
				if code != 0 {
					t.Fatalf("exit %d: %s", code, stderr)
				}
				def, err := os.ReadFile(filepath.Join(dir, tc.file))
				if err != nil {
					t.Fatal(err)
				}
				for _, w := range tc.want {
					if !strings.Contains(strings.ToUpper(string(def)), strings.ToUpper(w)) {
						t.Errorf("%s lacks %q", tc.file, w)
					}
				}
				if _, err := os.Stat(filepath.Join(dir, tc.vm+"_disk0."+tc.format)); err != nil {
					t.Errorf("the target's default format: %v", err)
				}
				if tc.target == "libvirt" {
					oracle.Run(t, "virt-xml-validate", filepath.Join(dir, tc.file), "domain")
				}
			})
		}
	})
	t.Run("refused", func(t *testing.T) {
		// An EFI VM cannot go to a VHD on Hyper-V (generation 2 takes VHDX
		// only): refused before anything is written.
		dir := t.TempDir()
		code, _, stderr := runCLI(t, "convert", "-q", "--vm", "web01", "--target", "hyperv", "-f", "vhd", "--out-dir", dir, ds1.volume)
		if code == 0 || !strings.Contains(stderr, "hyperv") {
			t.Errorf("exit %d: %s", code, stderr)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) > 0 {
			t.Errorf("a refused VM left %v", left)
		}
	})
}

// mkimage --vm and --sample-vms write VMs that vms reads back as the
// manifest says; a bad --vm is a usage error.
func TestMkimageVM(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "ds.img")
	mf := filepath.Join(dir, "m.json")
	code, _, stderr := runCLI(t, "mkimage", "-q", "--vmfs", "5", "--sample-vms", "--manifest", mf,
		"--vm", "app,guest=ubuntu-64,firmware=efi,cpus=2,memory=2048,disk=scsi0:0:thin:16MiB:pvscsi:20,disk=sata0:0:eager:4MiB,nic=vmxnet3:00:50:56:01:02:03:VM Network,snapshot=s1,snapshot=s2,revert=s1", img)
	if code != 0 {
		t.Fatalf("mkimage: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	var m testimages.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.VMs) != 4 {
		t.Fatalf("manifest lists %d VMs, want 4", len(m.VMs))
	}
	code, out, stderr := runCLI(t, "vms", "--json", img)
	if code != 0 {
		t.Fatalf("vms: exit %d: %s", code, stderr)
	}
	var got []vmJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	for _, g := range got {
		if g.Name != "app" {
			continue
		}
		if g.Firmware != "efi" || g.CPUs != 2 || g.MemoryMiB != 2048 || len(g.Disks) != 2 || g.CurrentSnapshot != "1" ||
			g.Disks[0].Path != "app/app-000003.vmdk" || g.Disks[1].Path != "app/app_1-000003.vmdk" || len(g.NICs) != 1 || g.NICs[0].MAC != "00:50:56:01:02:03" {
			t.Errorf("app: %+v", g)
		}
	}
	for _, bad := range []string{"x", "x,disk=scsi0:0:thin", "x,disk=scsi0:0:fat:1MiB", "x,firmware=uefi,disk=ide0:0:thin:1MiB", "x,disk=ide0:0:thin:1MiB,colour=red"} {
		if code, _, _ := runCLI(t, "mkimage", "-q", "--vm", bad, filepath.Join(dir, "bad.img")); code != exitUsage {
			t.Errorf("--vm %q: exit %d, want %d", bad, code, exitUsage)
		}
	}
}

// vms on a local folder of .vmx files in the shapes ESXi 6.5-8.0,
// Workstation and Fusion write (formats/vmx/testdata): every VM listed,
// each missing disk reported once.
func TestVMsLocalFolder(t *testing.T) {
	dir := filepath.Join("..", "..", "formats", "vmx", "testdata")
	vmxs, _ := filepath.Glob(filepath.Join(dir, "*.vmx"))
	code, out, stderr := runCLI(t, "vms", "--json", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got []vmJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(vmxs) || len(got) == 0 {
		t.Fatalf("%d VMs listed, %d .vmx files", len(got), len(vmxs))
	}
	for _, g := range got {
		seen := map[string]bool{}
		for _, p := range g.Problems {
			if strings.Contains(p, "not found") {
				if seen[p] {
					t.Errorf("%s: problem twice: %s", g.Name, p)
				}
				seen[p] = true
			}
		}
		if g.Firmware != "bios" && g.Firmware != "efi" {
			t.Errorf("%s: firmware %q", g.Name, g.Firmware)
		}
	}
}
