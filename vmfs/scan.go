package vmfs

import (
	"errors"
	"fmt"
	"sort"

	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device"
)

// ScanOptions tune Scan.
type ScanOptions struct {
	Device device.Options // how devices are opened (Direct)
}

// ScanResult is what Scan found: the volumes, and the devices it looked at
// that hold none.
type ScanResult struct {
	Volumes []ScannedVolume `json:"volumes"`
	Other   []ScannedDevice `json:"other"`
}

// ScannedVolume is one VMFS volume found by Scan: its devices grouped by
// LVM logical-volume UUID, snapshot ID (and logical size).
type ScannedVolume struct {
	// From the FS descriptor, which lives on the volume's first extent
	// (firstPE 0); zero when that device was not among those scanned
	// (Problem says so) — Capacity then comes from the LVM.
	Version   int    `json:"version"`
	Label     string `json:"label"`
	UUID      string `json:"uuid"` // FS UUID
	BlockSize int64  `json:"block_size"`
	Local     bool   `json:"local,omitempty"` // VMFS-L
	// From the LVM ("" and 0 for a bare logical volume).
	LVUUID   string `json:"lv_uuid"`
	SnapID   uint32 `json:"snap_id"`
	LVMMajor int    `json:"lvm_major"`
	Capacity int64  `json:"capacity"` // logical volume size in bytes
	// Extents lists the devices found, by index; Missing the extents none
	// of the scanned devices holds.
	Extents []ScanExtent    `json:"extents"`
	Missing []MissingExtent `json:"missing"`
	// Live is set when a host's heartbeat is live: the volume is (or was,
	// when the image was taken) mounted by LiveHosts.
	Live      bool     `json:"live"`
	LiveHosts []string `json:"live_hosts"`
	// Problem describes what could not be read (the FS descriptor, an LVM
	// inconsistency); "" when all is well.
	Problem string `json:"problem,omitempty"`
}

// ScanExtent is one device of a scanned volume.
type ScanExtent struct {
	Device          string `json:"device"`           // the path scanned
	PartitionOffset int64  `json:"partition_offset"` // start of the VMFS partition on the device
	Index           int    `json:"index"`            // position in the volume, 0 = first (holds the FS descriptor)
	Count           int    `json:"count"`            // extents the volume has (LVM numDevs)
	Logical         int64  `json:"logical"`          // first logical byte the device holds
	Length          int64  `json:"length"`           // logical bytes it holds
	DeviceID        string `json:"device_id,omitempty"`
	Size            int64  `json:"size"` // device size in bytes
}

// MissingExtent is a logical range of a scanned volume held by no scanned
// device.
type MissingExtent struct {
	Index   int    `json:"index"` // position of the (first) missing extent
	Logical int64  `json:"logical"`
	Length  int64  `json:"length"`
	Name    string `json:"name,omitempty"` // LVM device name, when device 0 records it
}

// ScannedDevice is a device that holds no (usable) VMFS: Reason says why
// (no VMFS signature, unreadable, permission denied, a second path to a
// device already seen).
type ScannedDevice struct {
	Device string `json:"device"`
	Size   int64  `json:"size"` // -1 when it could not be opened
	Reason string `json:"reason"`
	Err    error  `json:"-"`
}

// Paths returns the device paths of the volume's extents, for OpenFiles.
func (sv *ScannedVolume) Paths() []string {
	var p []string
	for _, e := range sv.Extents {
		p = append(p, e.Device)
	}
	return p
}

// Complete reports whether every extent of the volume was found.
func (sv *ScannedVolume) Complete() bool { return len(sv.Missing) == 0 && len(sv.Extents) > 0 }

// Scan probes the named devices or image files — with none, every attached
// device (device.List: Linux /sys/block and its partitions, Windows
// PhysicalDrive0…N, macOS /dev/rdisk*) — and groups the VMFS devices into
// volumes. A device that cannot be opened is listed in Other with the
// reason; Scan fails only when it cannot list the devices.
func Scan(opts ScanOptions, paths ...string) (*ScanResult, error) {
	if len(paths) == 0 {
		var err error
		if paths, err = device.List(); err != nil {
			return nil, err
		}
	}
	var devs []Device
	var opened []*device.Device
	defer func() {
		for _, d := range opened {
			d.Close()
		}
	}()
	var failed []ScannedDevice
	for _, p := range paths {
		d, err := device.Open(p, opts.Device)
		if err != nil {
			failed = append(failed, ScannedDevice{Device: p, Size: -1, Reason: err.Error(), Err: err})
			continue
		}
		opened = append(opened, d)
		devs = append(devs, DeviceOf(d))
	}
	r := ScanDevices(devs...)
	r.Other = append(failed, r.Other...)
	return r, nil
}

// ScanDevices is Scan over devices already open (in any order).
func ScanDevices(devs ...Device) *ScanResult {
	r := &ScanResult{Volumes: []ScannedVolume{}, Other: []ScannedDevice{}}
	other := func(d *Device, err error, format string, args ...any) {
		r.Other = append(r.Other, ScannedDevice{Device: d.Name, Size: d.Size, Reason: fmt.Sprintf(format, args...), Err: err})
	}
	type group struct {
		lds  []*lvmDev
		bare *Device
		off  int64
	}
	var groups []*group
	byKey := map[string]*group{}
	byDevID := map[UUID]string{}
	for i := range devs {
		d := &devs[i]
		if d.R == nil || d.Size < 0 {
			other(d, ErrInvalid, "no reader or negative size")
			continue
		}
		partOff, kind, err := probe(d)
		if err != nil {
			other(d, err, "%v", err)
			continue
		}
		if kind == entryBare {
			groups = append(groups, &group{bare: d, off: partOff})
			continue
		}
		ld, err := readLVM(d, i, partOff)
		if err != nil {
			other(d, err, "%v", err)
			continue
		}
		if prev, dup := byDevID[ld.meta.devID]; dup && !ld.meta.devID.IsZero() {
			other(d, ErrInvalid, "the same LVM device %s as %s (another path to it, or a copy)", ld.meta.devID, prev)
			continue
		}
		byDevID[ld.meta.devID] = d.Name
		// Devices that disagree on the volume size cannot be one volume
		// (a copy of a LUN from before the volume grew): keep them apart.
		key := fmt.Sprintf("%s/%d/%d", ld.vol.lvID, ld.vol.snapID, ld.vol.logicalSize)
		g := byKey[key]
		if g == nil {
			g = &group{}
			byKey[key] = g
			groups = append(groups, g)
		}
		g.lds = append(g.lds, ld)
	}
	for _, g := range groups {
		if g.bare != nil {
			r.Volumes = append(r.Volumes, scanBare(g.bare, g.off))
		} else {
			r.Volumes = append(r.Volumes, scanLVM(g.lds))
		}
	}
	return r
}

func scanBare(d *Device, partOff int64) ScannedVolume {
	size := d.Size - partOff
	sv := ScannedVolume{Capacity: size, Missing: []MissingExtent{}, LiveHosts: []string{},
		Extents: []ScanExtent{{Device: d.Name, PartitionOffset: partOff, Count: 1, Length: size, Size: d.Size}}}
	lv := &lvol{size: size, segs: []segment{{lOff: 0, len: size, dev: d, pOff: partOff}}}
	if err := scanFS(&sv, lv, UUID{}); err != nil {
		sv.Problem = err.Error()
	}
	return sv
}

func scanLVM(lds []*lvmDev) ScannedVolume {
	sort.SliceStable(lds, func(i, j int) bool { return ldStart(lds[i]) < ldStart(lds[j]) })
	first := lds[0]
	sv := ScannedVolume{LVUUID: first.vol.lvID.String(), SnapID: first.vol.snapID, LVMMajor: int(first.meta.major),
		Capacity: int64(min(first.vol.logicalSize, 1<<62)), Extents: []ScanExtent{}, Missing: []MissingExtent{}, LiveHosts: []string{}}
	count := max(int(first.vol.numDevs), len(lds), 1)
	var problems []error
	lv, infos, err := assemble(lds, true)
	if err != nil {
		problems = append(problems, err)
	}
	// Positions: present devices and missing ranges in logical order; a
	// single gap stands for every extent not found, several gaps for one
	// each.
	var gaps []ExtentInfo
	for _, in := range infos {
		if in.Missing {
			gaps = append(gaps, in)
		}
	}
	names := first.sdNames
	for _, ld := range lds {
		if ld.vol.firstPE == 0 && ld.sdNames != nil {
			names = ld.sdNames
		}
	}
	idx, gi := 0, 0
	addGap := func(g ExtentInfo) {
		m := MissingExtent{Index: idx, Logical: g.Logical, Length: g.Length}
		if idx < len(names) {
			m.Name = names[idx]
		}
		sv.Missing = append(sv.Missing, m)
		if len(gaps) == 1 {
			idx += max(count-len(lds), 1)
		} else {
			idx++
		}
	}
	for _, ld := range lds {
		lo, hi := ldStart(ld), int64(0)
		for _, p := range ld.pes {
			hi = max(hi, int64(min(p.lOffset+p.length, 1<<62)))
		}
		for gi < len(gaps) && gaps[gi].Logical < lo {
			addGap(gaps[gi])
			gi++
		}
		sv.Extents = append(sv.Extents, ScanExtent{Device: ld.dev.Name, PartitionOffset: ld.partOff, Index: idx, Count: count,
			Logical: lo, Length: max(min(hi, sv.Capacity)-lo, 0), DeviceID: ld.meta.devID.String(), Size: ld.dev.Size})
		idx++
	}
	for ; gi < len(gaps); gi++ {
		addGap(gaps[gi])
	}
	if lv != nil {
		if err := scanFS(&sv, lv, first.vol.lvID); err != nil {
			problems = append(problems, err)
		}
	}
	if err := errors.Join(problems...); err != nil {
		sv.Problem = err.Error()
	}
	return sv
}

// ldStart is the first logical byte a device holds (its firstPE when it has
// no PE entry).
func ldStart(ld *lvmDev) int64 {
	if len(ld.pes) > 0 {
		return int64(min(ld.pes[0].lOffset, 1<<62))
	}
	return int64(min(ld.vol.firstPE, 1<<30)) * peUnit
}

// scanFS reads the FS descriptor and the heartbeats of a scanned volume.
func scanFS(sv *ScannedVolume, lv *lvol, lvID UUID) error {
	if lv.size < fsDescriptorOff+fsDescLen {
		return corruptf("FS descriptor", fsDescriptorOff, "the logical volume holds only %d bytes", lv.size)
	}
	b := make([]byte, fsDescLen)
	if err := lv.readAt(b, fsDescriptorOff, "FS descriptor"); err != nil {
		if errors.Is(err, ErrMissingExtent) {
			return fmt.Errorf("the first extent (index 0, which holds the FS descriptor) was not found: label, version and block size unknown")
		}
		return err
	}
	f, err := parseFSDesc(b)
	if err != nil {
		return err
	}
	if !lvID.IsZero() && f.lvUUID != lvID {
		return fieldErr(ErrCorrupt, "FS descriptor", "LV UUID", fsDescriptorOff,
			"%s, but the LVM volume is %s (the filesystem does not belong to this logical volume)", f.lvUUID, lvID)
	}
	v := &Volume{lv: lv}
	v.setGeometry(f)
	v.readHeartbeats()
	sv.Version, sv.Label, sv.UUID, sv.BlockSize, sv.Local = v.info.Version, v.info.Label, v.info.UUID, v.info.BlockSize, v.info.Local
	sv.LiveHosts = append([]string{}, v.info.LiveHosts...)
	sv.Live = len(sv.LiveHosts) > 0
	return nil
}
