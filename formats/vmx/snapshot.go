package vmx

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Snapshot is one snapshot of the .vmsd.
//
// The disks of a snapshot are the files that were the VM's disks when the
// snapshot was taken and that were frozen by it (they became the parents
// of new deltas). The VM itself runs on the disks its .vmx names, which
// are children (directly or not) of the disks of CurrentSnapshot. After a
// revert, CurrentSnapshot is the snapshot reverted to — not necessarily a
// leaf of the tree — and the .vmx names a new delta beside the old branch.
type Snapshot struct {
	UID         string // snapshotN.uid
	Name        string // snapshotN.displayName
	Description string // snapshotN.description
	Parent      string // UID of the parent snapshot, "" for a root
	File        string // snapshotN.fileName: the .vmsn memory/config state
	Disks       []SnapshotDisk
	Children    []string // UIDs of the child snapshots, in file order
}

// SnapshotDisk is snapshotN.diskM: the disk at Node when the snapshot
// was taken. Datastore, Path and HostPath are resolved as for Disk.
type SnapshotDisk struct {
	Node      string // "scsi0:0"
	FileName  string // as written
	Datastore string
	Path      string
	HostPath  string
}

// Leaves returns the UIDs of the snapshots without children, in file
// order.
func (vm *VM) Leaves() []string {
	var out []string
	for _, s := range vm.Snapshots {
		if len(s.Children) == 0 {
			out = append(out, s.UID)
		}
	}
	return out
}

// SnapshotPath returns the UIDs from the root of the tree down to uid
// (nil when uid is unknown or the parents loop).
func (vm *VM) SnapshotPath(uid string) []string {
	var out []string
	for uid != "" {
		s, ok := vm.Snapshot(uid)
		if !ok || slices.Contains(out, uid) || len(out) > len(vm.Snapshots) {
			return nil
		}
		out = append(out, uid)
		uid = s.Parent
	}
	slices.Reverse(out)
	return out
}

var (
	reSnapshot = regexp.MustCompile(`^snapshot([0-9]+)\.(.+)$`)
	reSnapDisk = regexp.MustCompile(`^disk([0-9]+)\.(filename|node)$`)
)

// maxSnapshotIndex bounds the N of snapshotN keys (ESXi allows 32 levels,
// a tree can hold more snapshots; 10000 is far beyond any real file).
const maxSnapshotIndex = 9999

// snapshots reads the .vmsd: snapshot.current, snapshot.numSnapshots and
// every snapshotN.* group, whatever N (the numbering is kept dense by
// VMware, but a hand-edited file may have gaps).
func (b *builder) snapshots(f *File) {
	vb := builder{vm: b.vm, f: f}
	type group struct {
		idx   int
		snap  Snapshot
		disks map[int]*SnapshotDisk
		num   int64
	}
	groups := map[int]*group{}
	var idxs []int
	for _, k := range f.Keys() {
		m := reSnapshot.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		n, err := strconv.Atoi(m[1])
		if err != nil || n > maxSnapshotIndex {
			continue
		}
		g := groups[n]
		if g == nil {
			g = &group{idx: n, disks: map[int]*SnapshotDisk{}, num: -1}
			groups[n] = g
			idxs = append(idxs, n)
		}
		v := f.Value(k)
		switch field := m[2]; field {
		case "uid":
			g.snap.UID = strings.TrimSpace(v)
		case "displayname":
			g.snap.Name = v
		case "description":
			g.snap.Description = v
		case "parent":
			g.snap.Parent = strings.TrimSpace(v)
		case "filename":
			g.snap.File = v
		case "numdisks":
			g.num = vb.integer(k, -1, 0, maxUnit*16)
		default:
			dm := reSnapDisk.FindStringSubmatch(field)
			if dm == nil {
				continue
			}
			d, err := strconv.Atoi(dm[1])
			if err != nil || d > maxUnit*16 {
				continue
			}
			sd := g.disks[d]
			if sd == nil {
				sd = &SnapshotDisk{}
				g.disks[d] = sd
			}
			if dm[2] == "node" {
				sd.Node = strings.ToLower(v)
			} else {
				sd.FileName = v
			}
		}
	}
	slices.Sort(idxs)
	dir := path.Dir(b.vm.VMXPath)
	uids := map[string]bool{}
	var fileIdx []int // the N of each kept snapshot, for problem lines
	for _, n := range idxs {
		g := groups[n]
		prefix := fmt.Sprintf("snapshot%d", n)
		if g.snap.UID == "" {
			vb.problem(prefix+".uid", "%s has no uid; skipped", prefix)
			continue
		}
		if uids[g.snap.UID] {
			vb.problem(prefix+".uid", "%s repeats uid %s; skipped", prefix, g.snap.UID)
			continue
		}
		uids[g.snap.UID] = true
		var dn []int
		for d := range g.disks {
			dn = append(dn, d)
		}
		slices.Sort(dn)
		for _, d := range dn {
			sd := *g.disks[d]
			if sd.FileName == "" {
				vb.problem(fmt.Sprintf("%s.disk%d.node", prefix, d), "%s.disk%d has no fileName; skipped", prefix, d)
				continue
			}
			sd.Datastore, sd.Path, sd.HostPath = ResolvePath(dir, sd.FileName)
			g.snap.Disks = append(g.snap.Disks, sd)
		}
		if g.num >= 0 && int(g.num) != len(g.snap.Disks) {
			vb.problem(prefix+".numDisks", "%s.numDisks is %d but %d disks are listed", prefix, g.num, len(g.snap.Disks))
		}
		b.vm.Snapshots = append(b.vm.Snapshots, g.snap)
		fileIdx = append(fileIdx, n)
	}
	if v, ok := f.Get("snapshot.numSnapshots"); ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err != nil || n != len(b.vm.Snapshots) {
			vb.problem("snapshot.numSnapshots", "snapshot.numSnapshots is %q but %d snapshots are listed", v, len(b.vm.Snapshots))
		}
	}
	for i := range b.vm.Snapshots {
		s := &b.vm.Snapshots[i]
		if s.Parent == "" {
			continue
		}
		p, ok := b.vm.Snapshot(s.Parent)
		if !ok {
			vb.problem(fmt.Sprintf("snapshot%d.parent", fileIdx[i]), "snapshot %s (%q): parent %s does not exist; taken as a root", s.UID, s.Name, s.Parent)
			s.Parent = ""
			continue
		}
		p.Children = append(p.Children, s.UID)
	}
	for i, s := range b.vm.Snapshots {
		if b.vm.SnapshotPath(s.UID) == nil {
			vb.problem(fmt.Sprintf("snapshot%d.parent", fileIdx[i]), "snapshot %s (%q): its parents loop", s.UID, s.Name)
		}
	}
	cur := strings.TrimSpace(f.Value("snapshot.current"))
	if cur != "" {
		if s, ok := b.vm.Snapshot(cur); ok {
			b.vm.CurrentSnapshot = cur
			// The VM runs on deltas above the current snapshot's disks;
			// a .vmx naming one of those frozen files would write into
			// the snapshot.
			for _, sd := range s.Disks {
				if d, ok := b.vm.Disk(sd.Node); ok && d.Path != "" && d.Path == sd.Path && d.Datastore == sd.Datastore {
					b.problem(d.Node+".fileName", "disk %s names %s, which snapshot %s (%q) froze: the .vmx and the .vmsd disagree", d.Node, d.FileName, s.UID, s.Name)
				}
			}
		} else {
			vb.problem("snapshot.current", "snapshot.current %s names no snapshot", cur)
		}
	} else if len(b.vm.Snapshots) > 0 {
		vb.problem("snapshot.current", "snapshot.current is absent although %d snapshots exist", len(b.vm.Snapshots))
	}
}
