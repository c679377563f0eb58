package vmx

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
)

// The .vmsd of testdata/esxi80-sata-bios: snapshots 1 ← 2 ← 3 and 2 ← 4;
// the VM was reverted to 1 after 4 was taken, so it runs on a new delta
// (web03-000006.vmdk) above snapshot 1's disk, and the current snapshot
// is neither a leaf nor on the longest chain.
func TestSnapshotsRevertedBranch(t *testing.T) {
	vm := loadTestdata(t, "esxi80-sata-bios", "web03")
	if len(vm.Problems) != 0 {
		t.Errorf("problems: %q", vm.Problems)
	}
	if len(vm.Snapshots) != 4 {
		t.Fatalf("%d snapshots, want 4", len(vm.Snapshots))
	}
	if vm.CurrentSnapshot != "1" {
		t.Errorf("current snapshot %q, want 1", vm.CurrentSnapshot)
	}
	if got := vm.Leaves(); !slices.Equal(got, []string{"3", "4"}) {
		t.Errorf("leaves %q, want [3 4]", got)
	}
	if slices.Contains(vm.Leaves(), vm.CurrentSnapshot) {
		t.Error("the current snapshot is a leaf; the fixture is meant to have reverted")
	}
	if got := vm.SnapshotPath("3"); !slices.Equal(got, []string{"1", "2", "3"}) {
		t.Errorf("path to 3 = %q", got)
	}
	if got := vm.SnapshotPath("4"); !slices.Equal(got, []string{"1", "2", "4"}) {
		t.Errorf("path to 4 = %q", got)
	}
	s2, _ := vm.Snapshot("2")
	if s2.Name != "patched" || s2.Parent != "1" || !slices.Equal(s2.Children, []string{"3", "4"}) || s2.File != "web03-Snapshot2.vmsn" {
		t.Errorf("snapshot 2 = %+v", s2)
	}
	if len(s2.Disks) != 1 || s2.Disks[0].Node != "sata0:0" || s2.Disks[0].Path != "web03/web03-000001.vmdk" {
		t.Errorf("snapshot 2 disks = %+v", s2.Disks)
	}
	s1, _ := vm.Snapshot("1")
	if s1.Description != "clean install" || s1.Disks[0].Path != "web03/web03.vmdk" {
		t.Errorf("snapshot 1 = %+v", s1)
	}
	// The VM runs on what the .vmx names — not on the deepest leaf's disk
	// and not on the current snapshot's (frozen) disk.
	if len(vm.Disks) != 1 || vm.Disks[0].Path != "web03/web03-000006.vmdk" {
		t.Errorf("current disks %+v, want web03/web03-000006.vmdk", vm.Disks)
	}
}

func TestSnapshotProblems(t *testing.T) {
	vmxText := "guestOS = \"other\"\nmemsize = \"64\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"base.vmdk\"\n"
	tests := []struct {
		name, vmsd string
		problems   []string
		check      func(t *testing.T, vm *VM)
	}{
		{
			name:     "vmx names the frozen disk of the current snapshot",
			vmsd:     "snapshot.current = \"1\"\nsnapshot.numSnapshots = \"1\"\nsnapshot0.uid = \"1\"\nsnapshot0.numDisks = \"1\"\nsnapshot0.disk0.fileName = \"base.vmdk\"\nsnapshot0.disk0.node = \"scsi0:0\"\n",
			problems: []string{"disk scsi0:0 names base.vmdk, which snapshot 1"},
		},
		{
			name: "missing parent, current, uid; duplicate uid; counts off",
			vmsd: "snapshot.current = \"9\"\nsnapshot.numSnapshots = \"5\"\nsnapshot0.uid = \"1\"\nsnapshot0.parent = \"7\"\nsnapshot0.numDisks = \"2\"\n" +
				"snapshot0.disk0.fileName = \"a.vmdk\"\nsnapshot1.displayName = \"no uid\"\nsnapshot2.uid = \"1\"\nsnapshot3.uid = \"3\"\nsnapshot3.disk0.node = \"scsi0:0\"\n",
			problems: []string{
				"snapshot 1 (\"\"): parent 7 does not exist", "snapshot.current 9 names no snapshot", "snapshot1 has no uid",
				"snapshot2 repeats uid 1", "snapshot0.numDisks is 2 but 1 disks are listed", `snapshot.numSnapshots is "5" but 2 snapshots are listed`,
				"snapshot3.disk0 has no fileName",
			},
			check: func(t *testing.T, vm *VM) {
				if vm.CurrentSnapshot != "" || len(vm.Snapshots) != 2 || vm.Snapshots[0].Parent != "" {
					t.Errorf("snapshots %+v current %q", vm.Snapshots, vm.CurrentSnapshot)
				}
			},
		},
		{
			name:     "parents loop",
			vmsd:     "snapshot.current = \"1\"\nsnapshot0.uid = \"1\"\nsnapshot0.parent = \"2\"\nsnapshot1.uid = \"2\"\nsnapshot1.parent = \"1\"\n",
			problems: []string{"d/t.vmsd line 3: snapshot 1 (\"\"): its parents loop"},
			check: func(t *testing.T, vm *VM) {
				if vm.SnapshotPath("1") != nil || len(vm.Leaves()) != 0 {
					t.Errorf("path %q leaves %q", vm.SnapshotPath("1"), vm.Leaves())
				}
			},
		},
		{
			name:     "snapshots without current",
			vmsd:     "snapshot0.uid = \"1\"\n",
			problems: []string{"snapshot.current is absent although 1 snapshots exist"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := build(t, vmxText, tt.vmsd)
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

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLoad(t *testing.T) {
	root := t.TempDir()
	vmxText, _ := os.ReadFile("testdata/esxi80-sata-bios.vmx")
	vmsdText, _ := os.ReadFile("testdata/esxi80-sata-bios.vmsd")
	writeFiles(t, root, map[string]string{
		"web03/web03.vmx":         string(vmxText) + "numvcpus = \"2\"\n",
		"web03/web03.vmsd":        string(vmsdText),
		"web03/web03-000006.vmdk": "# descriptor\n",
		"ws/Debian 10.vmx":        "guestOS = \"debian10-64\"\nmemsize = \"64\"\nide0:0.present = \"TRUE\"\nide0:0.fileName = \"/home/jo/vms/Debian 10.vmdk\"\nide0:1.present = \"TRUE\"\nide0:1.fileName = \"gone.vmdk\"\nide1:0.present = \"TRUE\"\nide1:0.fileName = \"/vmfs/volumes/ds2/x/x.vmdk\"\n",
		"ws/Debian 10.vmsd":       "",
		"big/big.vmx":             strings.Repeat("#\n", MaxFileSize/2+1),
		"badvmsd/badvmsd.vmx":     "memsize = \"64\"\n",
		"badvmsd/badvmsd.vmsd":    "snapshot.current = \"1\nx\n",
		"nosnap/nosnap.VMX":       "memsize = \"64\"\n",
		"badvmx/badvmx.vmx":       "memsize = \"64\"\nbroken line\n",
	})
	fsys := vmdk.DirFS(root)

	vm, err := Load(fsys, "web03/web03.vmx")
	if err != nil {
		t.Fatal(err)
	}
	if vm.CurrentSnapshot != "1" || len(vm.Snapshots) != 4 || vm.Disks[0].Path != "web03/web03-000006.vmdk" {
		t.Errorf("web03: current %q, %d snapshots, disk %q", vm.CurrentSnapshot, len(vm.Snapshots), vm.Disks[0].Path)
	}
	if all := strings.Join(vm.Problems, "\n"); !strings.Contains(all, `web03/web03.vmx: line 30: key "numvcpus" repeats line 6`) || strings.Contains(all, "not found") {
		t.Errorf("web03 problems: %q", vm.Problems)
	}

	vm, err = Load(fsys, "ws/Debian 10.vmx")
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(vm.Problems, "\n")
	for _, want := range []string{
		`ws/Debian 10.vmx line 4: disk ide0:0 is named by the host path "/home/jo/vms/Debian 10.vmdk" and is not in the VM's folder as ws/Debian 10.vmdk`,
		"ws/Debian 10.vmx line 6: disk ide0:1: ws/gone.vmdk not found",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no problem %q in:\n%s", want, all)
		}
	}
	if strings.Contains(all, "x.vmdk") {
		t.Errorf("a disk on another datastore was looked for: %s", all)
	}
	if len(vm.Snapshots) != 0 || vm.Disks[2].Datastore != "ds2" || vm.Disks[2].Path != "x/x.vmdk" {
		t.Errorf("snapshots %d, disk %+v", len(vm.Snapshots), vm.Disks[2])
	}

	if _, err := Load(fsys, "big/big.vmx"); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "big/big.vmx") {
		t.Errorf("big: %v", err)
	}
	if vm, err := Load(fsys, "badvmsd/badvmsd.vmx"); err != nil || len(vm.Problems) != 2 ||
		!strings.Contains(vm.Problems[1], "badvmsd/badvmsd.vmsd: line 1: key \"snapshot.current\": value has no closing double quote: syntax error (snapshots not read)") {
		t.Errorf("bad vmsd: %v, %q", err, vm.Problems)
	}
	if _, err := Load(fsys, "badvmx/badvmx.vmx"); !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), "badvmx/badvmx.vmx: line 2") {
		t.Errorf("bad vmx: %v", err)
	}
	if _, err := Load(fsys, "missing/missing.vmx"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if vm, err := Load(fsys, "nosnap/nosnap.VMX"); err != nil || vm.Name != "nosnap" {
		t.Errorf("upper-case extension: %v", err)
	}
}
