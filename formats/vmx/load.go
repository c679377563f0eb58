package vmx

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
)

// Load reads the .vmx at vmxPath in fsys and the .vmsd beside it (same
// name, extension .vmsd; a missing or empty one means no snapshots, one
// that cannot be read or parsed is recorded in Problems) and builds the
// VM. Errors come from the .vmx only: it cannot be opened, is too large or
// does not parse. It then checks that every disk the .vmx names on the
// same FS exists (disks on another datastore, Disk.Datastore != "", are
// left to the caller) and records the missing ones in Problems.
//
// fsys is the same opener vmdk.Open takes, so a VM on a VMFS datastore and
// one in a local folder are read the same way.
func Load(fsys vmdk.FS, vmxPath string) (*VM, error) {
	vmx, err := readFile(fsys, vmxPath)
	if err != nil {
		return nil, err
	}
	vmsdPath := vmxPath + ".vmsd"
	if strings.HasSuffix(strings.ToLower(vmxPath), ".vmx") {
		vmsdPath = vmxPath[:len(vmxPath)-len(".vmx")] + ".vmsd"
	}
	// The snapshot list is information about the VM, not what it runs
	// on: a .vmsd that cannot be read is a problem, not a failure.
	var vmsdProblem string
	vmsd, err := readFile(fsys, vmsdPath)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			vmsdProblem = err.Error() + " (snapshots not read)"
		}
		vmsd = nil
	}
	vm := Build(vmxPath, vmx, vmsd)
	if vmsdProblem != "" {
		vm.Problems = append(vm.Problems, vmsdProblem)
	}
	for _, d := range vm.Disks {
		if d.Datastore != "" || d.Path == "" || d.Raw {
			continue
		}
		f, err := fsys.Open(d.Path)
		if err == nil {
			f.Close()
			continue
		}
		msg := fmt.Sprintf("%s: disk %s: %s not found", vmx.where(d.Node+".fileName"), d.Node, d.Path)
		if d.HostPath != "" {
			msg = fmt.Sprintf("%s: disk %s is named by the host path %q and is not in the VM's folder as %s", vmx.where(d.Node+".fileName"), d.Node, d.HostPath, d.Path)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			msg += " (" + err.Error() + ")"
		}
		vm.Problems = append(vm.Problems, msg)
	}
	vm.Problems = append(vm.Problems, vmx.Warnings...)
	if vmsd != nil {
		vm.Problems = append(vm.Problems, vmsd.Warnings...)
	}
	return vm, nil
}

// readFile opens name in fsys and parses it, refusing files larger than
// MaxFileSize before reading them.
func readFile(fsys vmdk.FS, name string) (*File, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, &Error{File: name, Msg: "open", Err: err}
	}
	defer f.Close()
	if f.Size() > MaxFileSize {
		return nil, &Error{File: name, Msg: fmt.Sprintf("%d bytes, larger than %d MiB", f.Size(), MaxFileSize>>20), Err: ErrTooLarge}
	}
	return Parse(io.NewSectionReader(f, 0, f.Size()), name)
}
