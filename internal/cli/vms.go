package cli

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

func vmsCommand() *cli.Command {
	return &cli.Command{
		Name:      "vms",
		Usage:     "list the virtual machines of a datastore or directory: disks at the point each VM runs on, firmware, NICs, snapshots",
		ArgsUsage: "VOLUME|DIR",
		Description: `Lists every virtual machine (.vmx) once: name, guest OS, firmware (BIOS or EFI, Secure Boot),
CPUs, memory, its disks in boot order (controller, bus:unit, the descriptor the .vmx names, its
chain from that point to the base, virtual size, allocated bytes, mode), CD-ROMs, network
adapters (model, MAC, network), the snapshot tree and the snapshot the VM runs on, hints that
it is running, and problems: a disk missing or on another datastore, a disk that is not the
leaf of its chain, raw device mappings and independent-nonpersistent disks, which do not
convert as one may think.

EXAMPLES:
   vmfs2vhd vms datastore1.img
   vmfs2vhd vms --json /vmfs/volumes/datastore1`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print a JSON array"},
			extentFlag(), directFlag(),
		},
		Action: runVMs,
	}
}

// vmSource is where VMs are read from: a VMFS volume or a local folder.
type vmSource struct {
	fsys  vmdk.FS
	files []string // every regular file, slash paths
	live  []string // hosts with a live heartbeat (volumes only)
	label string   // volume label and UUID, to tell own /vmfs/volumes paths
	uuid  string
	close func() error
}

// openVMSource opens VOLUME (a device or image) or DIR (a local folder).
func openVMSource(c *cli.Context, arg string) (*vmSource, error) {
	st, err := os.Stat(arg)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		var files []string
		err := filepath.WalkDir(arg, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				rel, err := filepath.Rel(arg, p)
				if err != nil {
					return err
				}
				files = append(files, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		return &vmSource{fsys: vmdk.DirFS(arg), files: files, close: func() error { return nil }}, nil
	}
	v, err := openVolume(c, arg)
	if err != nil {
		return nil, err
	}
	var files []string
	err = v.Walk(".", func(p string, info vmfs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Type == vmfs.TypeSystem && info.IsDir {
			return fs.SkipDir
		}
		if info.Type == vmfs.TypeRegular {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		v.Close()
		return nil, err
	}
	in := v.Info()
	return &vmSource{fsys: volumeFS(v), files: files, live: in.LiveHosts, label: in.Label, uuid: in.UUID, close: v.Close}, nil
}

// vmJSON is one VM of vms --json.
type vmJSON struct {
	Name            string       `json:"name"`
	VMX             string       `json:"vmx"`
	GuestOS         string       `json:"guest_os"`
	Firmware        string       `json:"firmware"`
	SecureBoot      bool         `json:"secure_boot"`
	CPUs            int          `json:"cpus"`
	CoresPerSocket  int          `json:"cores_per_socket"`
	MemoryMiB       int64        `json:"memory_mib"`
	HWVersion       int          `json:"hw_version"`
	Disks           []vmDiskJSON `json:"disks"`
	CDROMs          []vmCDJSON   `json:"cdroms"`
	NICs            []vmNICJSON  `json:"nics"`
	Snapshots       []vmSnapJSON `json:"snapshots"`
	CurrentSnapshot string       `json:"current_snapshot"`
	Running         bool         `json:"running"`
	RunningHints    []string     `json:"running_hints"`
	Problems        []string     `json:"problems"`
}

type vmDiskJSON struct {
	Controller     string `json:"controller"` // scsi0
	Bus            int    `json:"bus"`        // controller number: 0 of scsi0:1
	Unit           int    `json:"unit"`
	ControllerType string `json:"controller_type"`
	// Path is the descriptor the VMX names; Datastore is set when it is on
	// another datastore (then Chain and the sizes are unknown).
	Path        string   `json:"path"`
	Datastore   string   `json:"datastore,omitempty"`
	Chain       []string `json:"chain"` // from Path to the base
	VirtualSize int64    `json:"virtual_size"`
	Allocated   int64    `json:"allocated"`
	Mode        string   `json:"mode"`
	// Convertible is false for raw device mappings and disks that could
	// not be opened.
	Convertible bool `json:"convertible"`
}

type vmCDJSON struct {
	Node     string `json:"node"`
	Type     string `json:"type"`
	FileName string `json:"file_name"`
}

type vmNICJSON struct {
	Name        string `json:"name"`
	Model       string `json:"model"`
	MAC         string `json:"mac"`
	AddressType string `json:"address_type"`
	Network     string `json:"network"`
}

type vmSnapJSON struct {
	Name   string `json:"name"`
	UID    string `json:"uid"`
	Parent string `json:"parent"`
}

// vmReport is a VM read from a source with its disks opened.
type vmReport struct {
	vm   *vmx.VM
	json vmJSON
}

// ownDatastore reports whether a /vmfs/volumes/NAME path names the source
// itself (by label or UUID).
func (s *vmSource) ownDatastore(name string) bool {
	return name != "" && (name == s.label || name == s.uuid)
}

// loadVMs reads every .vmx of the source.
func loadVMs(s *vmSource) ([]vmReport, error) {
	var all []string
	for _, f := range s.files {
		if strings.EqualFold(path.Ext(f), ".vmdk") {
			all = append(all, f)
		}
	}
	chains, err := vmdk.Scan(s.fsys, all)
	if err != nil {
		return nil, err
	}
	// A descriptor that is the parent of another is not the leaf of its
	// chain: which deltas build on it.
	children := map[string][]string{}
	for _, d := range chains {
		for i := 1; i < len(d.Chain); i++ {
			if !slices.Contains(children[d.Chain[i]], d.Chain[i-1]) {
				children[d.Chain[i]] = append(children[d.Chain[i]], d.Chain[i-1])
			}
		}
	}
	var out []vmReport
	for _, f := range s.files {
		if !strings.EqualFold(path.Ext(f), ".vmx") {
			continue
		}
		vm, err := vmx.Load(s.fsys, f)
		if err != nil {
			return nil, err
		}
		out = append(out, describeVM(s, vm, children))
	}
	return out, nil
}

// describeVM opens the VM's disks and gathers what vms reports.
func describeVM(s *vmSource, vm *vmx.VM, children map[string][]string) vmReport {
	j := vmJSON{
		Name: vm.Name, VMX: vm.VMXPath, GuestOS: vm.GuestOS, Firmware: vm.Firmware, SecureBoot: vm.SecureBoot,
		CPUs: vm.CPUs, CoresPerSocket: vm.CoresPerSocket, MemoryMiB: vm.MemoryMiB, HWVersion: vm.HWVersion,
		Disks: []vmDiskJSON{}, CDROMs: []vmCDJSON{}, NICs: []vmNICJSON{}, Snapshots: []vmSnapJSON{},
		CurrentSnapshot: vm.CurrentSnapshot, RunningHints: []string{},
		Problems: append([]string{}, vm.Problems...),
	}
	for _, d := range vm.Disks {
		dj := vmDiskJSON{Controller: d.Controller, Bus: d.Number, Unit: d.Unit, ControllerType: d.ControllerType,
			Path: d.Path, Mode: d.Mode, Chain: []string{}}
		if dj.Mode == "" {
			dj.Mode = "persistent"
		}
		switch {
		case d.Raw:
			j.Problems = append(j.Problems, fmt.Sprintf("disk %s is a host's physical disk (rawDisk): it has no data in a file and will not be converted", d.Node))
		case d.Datastore != "" && !s.ownDatastore(d.Datastore):
			dj.Datastore = d.Datastore
			j.Problems = append(j.Problems, fmt.Sprintf("disk %s (%s) is on datastore %s: give --datastore %s=VOLUME to convert it", d.Node, d.Path, d.Datastore, d.Datastore))
		case d.Path == "":
			j.Problems = append(j.Problems, fmt.Sprintf("disk %s: %q cannot be resolved on this datastore", d.Node, d.FileName))
		default:
			if f, err := s.fsys.Open(d.Path); err != nil {
				break // vmx.Load has said it is missing
			} else {
				f.Close()
			}
			info, err := vmdk.Scan(s.fsys, []string{d.Path})
			if err != nil || len(info) != 1 {
				j.Problems = append(j.Problems, fmt.Sprintf("disk %s (%s): %v", d.Node, d.Path, err))
				break
			}
			di := info[0]
			dj.Chain, dj.VirtualSize, dj.Allocated = di.Chain, di.VirtualSize, di.Allocated
			dj.Convertible = len(di.Problems) == 0
			for _, p := range di.Problems {
				j.Problems = append(j.Problems, fmt.Sprintf("disk %s (%s): %s", d.Node, d.Path, p))
			}
			if kids := children[d.Path]; len(kids) > 0 {
				j.Problems = append(j.Problems, fmt.Sprintf("disk %s: %s is not the leaf of its chain (%s builds on it): the VM runs on this point, the later deltas are not converted", d.Node, d.Path, strings.Join(kids, ", ")))
			}
		}
		if dj.Mode == "independent-nonpersistent" {
			j.Problems = append(j.Problems, fmt.Sprintf("disk %s is independent-nonpersistent: what the VM writes is discarded at power-off, so it converts as the disk the .vmx names", d.Node))
		}
		j.Disks = append(j.Disks, dj)
	}
	for _, cd := range vm.CDROMs {
		j.CDROMs = append(j.CDROMs, vmCDJSON{Node: cd.Node, Type: cd.DeviceType, FileName: cd.FileName})
	}
	for _, n := range vm.NICs {
		j.NICs = append(j.NICs, vmNICJSON{Name: n.Name, Model: n.Model, MAC: n.MAC, AddressType: n.AddressType, Network: n.Network})
	}
	for _, sn := range vm.Snapshots {
		j.Snapshots = append(j.Snapshots, vmSnapJSON{Name: sn.Name, UID: sn.UID, Parent: sn.Parent})
	}
	// Running: ESXi keeps a swap file (.vswp) beside a powered-on VM;
	// hosted products a .lck lock; a live heartbeat means a host had the
	// volume mounted.
	dir := path.Dir(vm.VMXPath)
	for _, f := range s.files {
		if path.Dir(f) != dir && !strings.HasPrefix(path.Dir(f), dir+"/") {
			continue
		}
		switch ext := strings.ToLower(path.Ext(f)); {
		case ext == ".vswp":
			j.RunningHints = append(j.RunningHints, "swap file "+f)
		case ext == ".lck" || strings.Contains(strings.ToLower(f), ".lck/"):
			j.RunningHints = append(j.RunningHints, "lock "+f)
		}
	}
	if len(j.RunningHints) > 0 && len(s.live) > 0 {
		j.RunningHints = append(j.RunningHints, "live heartbeat of host "+strings.Join(s.live, ", "))
	}
	j.Running = len(j.RunningHints) > 0
	if j.Running {
		j.Problems = append(j.Problems, "the VM looks powered on ("+strings.Join(j.RunningHints, "; ")+"): power it off, or convert the base of a snapshot and apply the rest later with convert --update")
	}
	return vmReport{vm: vm, json: j}
}

func runVMs(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if c.NArg() != 1 {
		return usageErrorf("vms: want one VOLUME or DIR argument")
	}
	s, err := openVMSource(c, c.Args().First())
	if err != nil {
		return err
	}
	defer s.close()
	vms, err := loadVMs(s)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		out := []vmJSON{}
		for _, r := range vms {
			out = append(out, r.json)
		}
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(c.App.Writer, "%s\n", b)
		return err
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	for i, r := range vms {
		j := r.json
		if i > 0 {
			fmt.Fprintln(w)
		}
		fw := j.Firmware
		if j.SecureBoot {
			fw += " (Secure Boot)"
		}
		state := "off"
		if j.Running {
			state = "running?"
		}
		fmt.Fprintf(w, "%s\t%s\n", j.Name, j.VMX)
		fmt.Fprintf(w, "  guest %s, %s, %d vCPU, %d MiB, hardware version %d, %s\n", j.GuestOS, fw, j.CPUs, j.MemoryMiB, j.HWVersion, state)
		for _, d := range j.Disks {
			where := d.Path
			if d.Datastore != "" {
				where = "[" + d.Datastore + "] " + d.Path
			}
			fmt.Fprintf(w, "  disk\t%s:%d (%s)\t%s\t%s\t%s allocated\t%s\t%d layers\n", d.Controller, d.Unit, d.ControllerType, where,
				formatSize(d.VirtualSize), formatSize(d.Allocated), d.Mode, len(d.Chain))
		}
		for _, cd := range j.CDROMs {
			fmt.Fprintf(w, "  cdrom\t%s\t%s\t%s\n", cd.Node, cd.Type, cd.FileName)
		}
		for _, n := range j.NICs {
			fmt.Fprintf(w, "  nic\t%s\t%s\t%s\t%s\n", n.Name, n.Model, n.MAC, n.Network)
		}
		for _, sn := range j.Snapshots {
			cur := ""
			if sn.UID == j.CurrentSnapshot {
				cur = " (current)"
			}
			fmt.Fprintf(w, "  snapshot\t%s\t%q%s\tparent %s\n", sn.UID, sn.Name, cur, orNone(sn.Parent))
		}
		for _, p := range j.Problems {
			fmt.Fprintf(w, "  problem: %s\n", p)
		}
	}
	return w.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// findVM picks the VM named by --vm: a .vmx path or a display name.
func findVM(vms []vmReport, want string) (vmReport, error) {
	var hits []vmReport
	for _, r := range vms {
		if r.vm.VMXPath == strings.TrimPrefix(want, "/") || r.vm.Name == want {
			hits = append(hits, r)
		}
	}
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		var names []string
		for _, r := range vms {
			names = append(names, fmt.Sprintf("%q (%s)", r.vm.Name, r.vm.VMXPath))
		}
		return vmReport{}, usageErrorf("no VM %q here; the VMs are: %s", want, strings.Join(names, ", "))
	default:
		var paths []string
		for _, r := range hits {
			paths = append(paths, r.vm.VMXPath)
		}
		return vmReport{}, usageErrorf("several VMs are named %q: give the .vmx path (%s)", want, strings.Join(paths, ", "))
	}
}
