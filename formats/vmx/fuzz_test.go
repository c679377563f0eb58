package vmx

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// addSeeds adds every testdata file with one of the extensions.
func addSeeds(f *testing.F, exts ...string) {
	files, err := filepath.Glob("testdata/*")
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range files {
		for _, e := range exts {
			if strings.HasSuffix(p, e) {
				data, err := os.ReadFile(p)
				if err != nil {
					f.Fatal(err)
				}
				f.Add(data)
			}
		}
	}
}

var reMAC = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)

// checkParsed holds for every file Parse accepts.
func checkParsed(t *testing.T, data []byte, f *File, err error) {
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || e.File != "fuzz" {
			t.Fatalf("error %v is not an *Error naming the file", err)
		}
		if errors.Is(err, ErrSyntax) && e.Line <= 0 {
			t.Fatalf("syntax error without a line: %v", err)
		}
		return
	}
	for _, k := range f.Keys() {
		e, ok := f.Entry(k)
		if !ok || strings.ToLower(e.Key) != k || e.Line <= 0 {
			t.Fatalf("key %q: entry %+v", k, e)
		}
		if !utf8.ValidString(e.Value) {
			t.Fatalf("key %q: value %q is not UTF-8", k, e.Value)
		}
	}
}

func FuzzParseVMX(f *testing.F) {
	addSeeds(f, ".vmx")
	f.Add([]byte("scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"../../x|22.vmdk\"\nbios.hddOrder = \"scsi0:0,,\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseBytes(data, "fuzz")
		checkParsed(t, data, file, err)
		if err != nil {
			return
		}
		vm := Build("d/fuzz.vmx", file, nil)
		if vm.Firmware != "bios" && vm.Firmware != "efi" || vm.CPUs < 1 || vm.CoresPerSocket < 1 || vm.CPUs%vm.CoresPerSocket != 0 || vm.MemoryMiB < 1 {
			t.Fatalf("VM out of range: %+v", vm)
		}
		seen := map[string]bool{}
		for _, d := range vm.Disks {
			if seen[d.Node] {
				t.Fatalf("disk %s twice", d.Node)
			}
			seen[d.Node] = true
			if strings.HasPrefix(d.Path, "/") || d.Path == ".." || strings.HasPrefix(d.Path, "../") {
				t.Fatalf("disk %s path %q leaves the FS", d.Node, d.Path)
			}
		}
		for _, n := range vm.NICs {
			if n.MAC != "" && !reMAC.MatchString(n.MAC) {
				t.Fatalf("MAC %q", n.MAC)
			}
		}
	})
}

func FuzzParseVMSD(f *testing.F) {
	addSeeds(f, ".vmsd")
	f.Add([]byte("snapshot.current = \"2\"\nsnapshot0.uid = \"1\"\nsnapshot0.parent = \"2\"\nsnapshot1.uid = \"2\"\nsnapshot1.parent = \"1\"\nsnapshot1.disk0.fileName = \"/vmfs/volumes/x/y.vmdk\"\n"))
	vmx, err := ParseBytes([]byte("scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n"), "fuzz.vmx")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseBytes(data, "fuzz")
		checkParsed(t, data, file, err)
		if err != nil {
			return
		}
		vm := Build("d/fuzz.vmx", vmx, file)
		uids := map[string]bool{}
		for _, s := range vm.Snapshots {
			if s.UID == "" || uids[s.UID] {
				t.Fatalf("snapshot uid %q empty or repeated", s.UID)
			}
			uids[s.UID] = true
		}
		for _, s := range vm.Snapshots {
			if s.Parent != "" && !uids[s.Parent] {
				t.Fatalf("snapshot %s has unknown parent %s", s.UID, s.Parent)
			}
			vm.SnapshotPath(s.UID) // must end, loops or not
		}
		if vm.CurrentSnapshot != "" && !uids[vm.CurrentSnapshot] {
			t.Fatalf("current %q is not a snapshot", vm.CurrentSnapshot)
		}
		_ = vm.Leaves()
	})
}
