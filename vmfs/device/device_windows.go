//go:build windows

package device

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/windows"
)

// openOS opens a Windows physical drive (\\.\PhysicalDriveN, or another
// \\.\ device) or an image file. Drives are opened read-only sharing read
// and write with everyone (never locking others out); size from
// IOCTL_DISK_GET_LENGTH_INFO, logical sector size from
// IOCTL_STORAGE_QUERY_PROPERTY (access alignment) or
// IOCTL_DISK_GET_DRIVE_GEOMETRY_EX. Options.Direct changes nothing here:
// the system cache does not hold physical-drive reads.
func openOS(path string, opts Options) (*Device, error) {
	if !isWindowsDevicePath(path) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		return &Device{name: path, f: f, size: st.Size()}, nil
	}
	p, err := windows.UTF16PtrFromString(path)
	if err != nil {
		return nil, err
	}
	h, err := windows.CreateFile(p, windows.GENERIC_READ, windows.FILE_SHARE_READ|windows.FILE_SHARE_WRITE,
		nil, windows.OPEN_EXISTING, windows.FILE_ATTRIBUTE_NORMAL, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	d := &Device{name: path, raw: true, size: -1}
	ioctl := func(code uint32, in []byte, outLen int) ([]byte, error) {
		out := make([]byte, outLen)
		var n uint32
		var inp *byte
		if len(in) > 0 {
			inp = &in[0]
		}
		if err := windows.DeviceIoControl(h, code, inp, uint32(len(in)), &out[0], uint32(len(out)), &n, nil); err != nil {
			return nil, err
		}
		return out[:n], nil
	}
	var errs []error
	if b, err := ioctl(ioctlDiskGetLengthInfo, nil, lengthInfoSize); err == nil {
		if n, err := decodeLengthInfo(b); err == nil {
			d.size = n
		} else {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, fmt.Errorf("IOCTL_DISK_GET_LENGTH_INFO: %w", err))
	}
	if b, err := ioctl(ioctlDiskGetDriveGeometryEx, nil, 256); err == nil {
		if ss, size, err := decodeGeometryEx(b); err == nil {
			d.sector = ss
			if d.size < 0 {
				d.size = size
			}
		}
	} else {
		errs = append(errs, fmt.Errorf("IOCTL_DISK_GET_DRIVE_GEOMETRY_EX: %w", err))
	}
	if b, err := ioctl(ioctlStorageQueryProperty, storageAlignmentQuery(), 64); err == nil {
		if l, _, err := decodeAccessAlignment(b); err == nil {
			d.sector = l
		}
	}
	if d.size < 0 {
		windows.CloseHandle(h)
		return nil, fmt.Errorf("device: %s: cannot tell its size: %w", path, errors.Join(errs...))
	}
	d.f = os.NewFile(uintptr(h), path)
	return d, nil
}

// List returns \\.\PhysicalDrive0, 1, … that exist (numbers may have gaps:
// it stops after 16 missing in a row), for Scan without arguments. A drive
// it may not open is listed: opening it then says what is needed.
func List() ([]string, error) {
	var out []string
	for i, misses := 0, 0; i < 256 && misses < 16; i++ {
		p, _ := windows.UTF16PtrFromString(physicalDrive(i))
		h, err := windows.CreateFile(p, 0, windows.FILE_SHARE_READ|windows.FILE_SHARE_WRITE, nil, windows.OPEN_EXISTING, 0, 0)
		if errors.Is(err, windows.ERROR_FILE_NOT_FOUND) || errors.Is(err, windows.ERROR_PATH_NOT_FOUND) {
			misses++
			continue
		}
		misses = 0
		if err == nil {
			windows.CloseHandle(h)
		}
		out = append(out, physicalDrive(i))
	}
	return out, nil
}
