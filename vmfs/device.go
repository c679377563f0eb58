package vmfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device"
)

// Device is one device or image file holding a VMFS volume or one extent of
// a spanned volume. R must be safe for concurrent use (an *os.File is).
type Device struct {
	Name string      // for error messages, e.g. the file name
	R    io.ReaderAt // the whole device
	Size int64       // bytes
}

// readDev reads len(p) bytes at off of d, turning a short read into an error
// that names the device and the offset.
func readDev(d *Device, p []byte, off int64, what string) error {
	if off < 0 || off > d.Size-int64(len(p)) {
		return &Error{What: what, Vol: -1, Device: d.Name, DevOff: off,
			Msg: fmt.Sprintf("%d bytes needed but the device holds %d (truncated image?)", len(p), d.Size), Err: ErrCorrupt}
	}
	n, err := d.R.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return &Error{What: what, Vol: -1, Device: d.Name, DevOff: off + int64(n),
			Msg: "short read (truncated image?)", Err: ErrCorrupt}
	}
	return &Error{What: what, Vol: -1, Device: d.Name, DevOff: off + int64(n), Msg: "read failed", Err: err}
}

// Partition table constants (§2).
const (
	sector          = 512
	mbrSigOff       = 510
	mbrTableOff     = 446
	mbrTypeVMFS     = 0xFB
	mbrTypeGPTProt  = 0xEE
	gptSig          = "EFI PART"
	gptMaxEntries   = 1024
	gptMaxEntrySize = 4096
	lvmHeaderOffset = 0x100000 // LVM device header, from the partition start
	fsDescriptorOff = 0x200000 // FS descriptor, logical
	lvmMagic        = 0xC001D00D
	fsMagic         = 0x2FABF15E
	fsMagicLocal    = 0x2FABF15F // VMFS-L
)

// gptVMFSType is AA31E02A-400F-11DB-9590-000C2911D1B8 in GPT byte order.
var gptVMFSType = [16]byte{0x2A, 0xE0, 0x31, 0xAA, 0x0F, 0x40, 0xDB, 0x11, 0x95, 0x90, 0x00, 0x0C, 0x29, 0x11, 0xD1, 0xB8}

// entry kinds
const (
	entryLVM  = 1 // LVM device header at part+1 MiB
	entryBare = 2 // FS descriptor at part+2 MiB, no LVM
)

// probe finds the VMFS entry point on d: the partition offset and whether an
// LVM header or a bare logical volume lives there.
func probe(d *Device) (partOff int64, kind int, err error) {
	check := func(off int64) (int, error) {
		var b [4]byte
		if off+lvmHeaderOffset+4 <= d.Size {
			if err := readDev(d, b[:], off+lvmHeaderOffset, "LVM device header"); err != nil {
				return 0, err
			}
			if u32(b[:], 0) == lvmMagic {
				return entryLVM, nil
			}
		}
		if off+fsDescriptorOff+4 <= d.Size {
			if err := readDev(d, b[:], off+fsDescriptorOff, "FS descriptor"); err != nil {
				return 0, err
			}
			if m := u32(b[:], 0); m == fsMagic || m == fsMagicLocal {
				return entryBare, nil
			}
		}
		return 0, nil
	}
	// Partitioned disks first: a protective MBR or an MBR with a 0xFB
	// partition is more specific than magic numbers at fixed offsets.
	parts, err := partitions(d)
	if err != nil {
		return 0, 0, err
	}
	for _, off := range parts {
		k, err := check(off)
		if err != nil {
			return 0, 0, err
		}
		if k != 0 {
			return off, k, nil
		}
	}
	k, err := check(0)
	if err != nil {
		return 0, 0, err
	}
	if k != 0 {
		return 0, k, nil
	}
	return 0, 0, &Error{Device: d.Name, Vol: -1, DevOff: -1,
		Msg: "no LVM header at 1 MiB, no FS descriptor at 2 MiB, no VMFS partition (MBR 0xFB or GPT)", Err: ErrNotVMFS}
}

// partitions returns the start offsets of the VMFS partitions of an MBR or
// GPT disk, in table order (nil when there is no partition table).
func partitions(d *Device) ([]int64, error) {
	if d.Size < 2*sector {
		return nil, nil
	}
	var mbr [sector]byte
	if err := readDev(d, mbr[:], 0, "MBR"); err != nil {
		return nil, err
	}
	if mbr[mbrSigOff] != 0x55 || mbr[mbrSigOff+1] != 0xAA {
		return nil, nil
	}
	var out []int64
	gpt := false
	for i := range 4 {
		e := mbr[mbrTableOff+16*i:][:16]
		switch e[4] {
		case mbrTypeVMFS:
			if start := int64(u32(e, 8)) * sector; start > 0 && start < d.Size {
				out = append(out, start)
			}
		case mbrTypeGPTProt:
			gpt = true
		}
	}
	if !gpt {
		return out, nil
	}
	for _, ss := range []int64{512, 4096} {
		p, err := gptPartitions(d, ss)
		if err != nil {
			return nil, err
		}
		if p != nil {
			return append(out, p...), nil
		}
	}
	return out, nil
}

func gptPartitions(d *Device, ss int64) ([]int64, error) {
	if d.Size < 2*ss+92 {
		return nil, nil
	}
	hdr := make([]byte, 92)
	if err := readDev(d, hdr, ss, "GPT header"); err != nil {
		return nil, err
	}
	if !bytes.Equal(hdr[:8], []byte(gptSig)) {
		return nil, nil
	}
	lba, n, esz := u64(hdr, 0x48), u32(hdr, 0x50), u32(hdr, 0x54)
	if n == 0 || n > gptMaxEntries || esz < 128 || esz > gptMaxEntrySize || lba > uint64(d.Size)/uint64(ss) {
		return nil, &Error{What: "GPT header", Vol: -1, Device: d.Name, DevOff: ss, Err: ErrCorrupt,
			Msg: fmt.Sprintf("implausible partition array: LBA %d, %d entries of %d bytes", lba, n, esz)}
	}
	tbl := make([]byte, int(n)*int(esz))
	if err := readDev(d, tbl, int64(lba)*ss, "GPT partition array"); err != nil {
		return nil, err
	}
	var out []int64
	for i := range int(n) {
		e := tbl[i*int(esz):]
		if bytes.Equal(e[:16], gptVMFSType[:]) {
			first := u64(e, 32)
			if first > 0 && first < uint64(d.Size)/uint64(ss) {
				out = append(out, int64(first)*ss)
			}
		}
	}
	if out == nil {
		out = []int64{}
	}
	return out, nil
}

// OpenFiles opens the named device or image files read-only and the volume
// they hold (the extents of a spanned volume in any order). Closing the
// volume closes the files. Devices are opened through package device: a
// raw device (a Linux block device, a Windows \\.\PhysicalDriveN, a macOS
// /dev/rdiskN) is sized by the OS and read aligned to its sector size.
func OpenFiles(paths ...string) (*Volume, error) {
	return OpenFilesOptions(Options{}, paths...)
}

// OpenFilesOptions is OpenFiles with options.
func OpenFilesOptions(opts Options, paths ...string) (*Volume, error) {
	return OpenPaths(opts, device.Options{}, paths...)
}

// OpenPaths is OpenFilesOptions with device options (device.Options.Direct
// reads around the page cache).
func OpenPaths(opts Options, dopts device.Options, paths ...string) (*Volume, error) {
	devs, err := openDevices(dopts, paths)
	if err != nil {
		return nil, err
	}
	return OpenDevices(opts, devs...)
}

// openDevices opens every path, or none.
func openDevices(dopts device.Options, paths []string) ([]*device.Device, error) {
	var devs []*device.Device
	for _, p := range paths {
		d, err := device.Open(p, dopts)
		if err != nil {
			for _, d := range devs {
				d.Close()
			}
			return nil, err
		}
		devs = append(devs, d)
	}
	return devs, nil
}

// DeviceOf describes an open device for Open.
func DeviceOf(d *device.Device) Device {
	return Device{Name: d.Name(), R: d, Size: d.Size()}
}

// OpenDevices opens the volume held by devices opened with device.Open and
// takes them over: Volume.Close closes them, and so does OpenDevices when it
// fails.
func OpenDevices(opts Options, devs ...*device.Device) (*Volume, error) {
	vd := make([]Device, len(devs))
	for i, d := range devs {
		vd[i] = DeviceOf(d)
	}
	v, err := OpenOptions(opts, vd...)
	if err != nil {
		for _, d := range devs {
			d.Close()
		}
		return nil, err
	}
	for _, d := range devs {
		v.closers = append(v.closers, d)
	}
	return v, nil
}

// Close closes the files opened by OpenFiles; for a volume from Open it does
// nothing.
func (v *Volume) Close() error {
	var errs []error
	for _, c := range v.closers {
		errs = append(errs, c.Close())
	}
	v.closers = nil
	return errors.Join(errs...)
}
