// Package device opens what a VMFS datastore lives on — an image file, a
// Linux block device (/dev/sdX, /dev/mapper/…, /dev/disk/by-id/… links), a
// Windows physical drive (\\.\PhysicalDriveN), a macOS disk (/dev/diskN,
// /dev/rdiskN) — read-only, learns its size and logical sector size from
// the operating system, and reads it through Aligned where the device
// demands sector-aligned reads (every raw device, on every OS, and
// anything opened with Options.Direct).
//
// Per-OS code lives in device_linux.go, device_windows.go, device_darwin.go
// and device_other.go; the arithmetic and the decoding of what the OS
// answers (ioctl output buffers, sysfs text) are OS-free (decode.go) and
// tested everywhere. The package knows nothing of VMFS.
package device

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"syscall"
)

// Options tune Open.
type Options struct {
	// Direct reads around the operating system's cache: O_DIRECT on Linux
	// (large LUNs are read without filling the page cache), F_NOCACHE on
	// macOS; on Windows it changes nothing (physical drives are not cached
	// by the system; image files are read as usual). Where the file system
	// refuses O_DIRECT (tmpfs, some FUSE and network file systems) an image
	// file falls back to cached reads and Device.Direct reports false.
	Direct bool
	// CacheBytes bounds the cache of small aligned reads (see Aligned); 0
	// means DefaultCacheBytes, a negative value disables it.
	CacheBytes int64
}

// DefaultCacheBytes is the default bound of a device's small-read cache.
const DefaultCacheBytes = 1 << 20

// Device is an open device or image file. It is an io.ReaderAt safe for
// concurrent use.
type Device struct {
	name   string
	f      *os.File
	r      io.ReaderAt // f, or an *Aligned over f
	size   int64
	sector int  // logical sector size; 0 when unknown (image files)
	align  int  // alignment O_DIRECT needs on an image file; 0 = sector
	raw    bool // a block or character device, not a regular file
	direct bool
}

// Open opens path read-only. A device that cannot be opened for lack of
// rights gets an *AccessError that says what is needed.
func Open(path string, opts Options) (*Device, error) {
	d, err := openOS(path, opts)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, &AccessError{Path: path, Err: err, Hint: accessHint(runtime.GOOS, os.Geteuid() == 0)}
		}
		return nil, err
	}
	if d.size < 0 {
		d.f.Close()
		return nil, fmt.Errorf("device: %s: negative size %d", path, d.size)
	}
	d.r = d.f
	if d.raw || d.direct {
		ss := d.sector
		if d.align != 0 {
			ss = d.align
		}
		if ss == 0 {
			ss = defaultSect
		}
		cb := opts.CacheBytes
		if cb == 0 {
			cb = DefaultCacheBytes
		}
		a, err := NewAligned(d.f, d.size, ss, max(cb, 0))
		if err != nil {
			d.f.Close()
			return nil, fmt.Errorf("device: %s: %w", path, err)
		}
		d.r = a
	}
	return d, nil
}

// ReadAt implements io.ReaderAt.
func (d *Device) ReadAt(p []byte, off int64) (int, error) { return d.r.ReadAt(p, off) }

// ErrWrapped is returned by SyscallConn when reads go through the Aligned
// layer, so that the file must not be read around it.
var ErrWrapped = errors.New("device: reads go through the aligned-read layer")

// SyscallConn gives access to the open file (syscall.Conn) when its bytes
// may be read straight from it — an image file or a device read through
// the operating system's cache — so that a caller can hand them to
// sendfile(2). With --direct or the aligned-read layer it returns
// ErrWrapped.
func (d *Device) SyscallConn() (syscall.RawConn, error) {
	if d.r != io.ReaderAt(d.f) {
		return nil, fmt.Errorf("device: %s: %w", d.name, ErrWrapped)
	}
	return d.f.SyscallConn()
}

// Name returns the path given to Open.
func (d *Device) Name() string { return d.name }

// Size returns the size of the device or file in bytes.
func (d *Device) Size() int64 { return d.size }

// SectorSize returns the logical sector size the OS reported for a device
// (0 for an image file).
func (d *Device) SectorSize() int { return d.sector }

// Raw reports whether the path is a device rather than an image file.
func (d *Device) Raw() bool { return d.raw }

// Direct reports whether reads bypass the operating system's cache.
func (d *Device) Direct() bool { return d.direct }

// Aligned reports whether reads go through an Aligned wrapper.
func (d *Device) Aligned() bool { _, ok := d.r.(*Aligned); return ok }

// Close closes the device.
func (d *Device) Close() error { return d.f.Close() }

// AccessError is returned by Open when the OS refuses access; Hint says what
// is needed (root or the disk group, an elevated prompt, Full Disk Access).
type AccessError struct {
	Path string
	Err  error
	Hint string
}

func (e *AccessError) Error() string {
	return fmt.Sprintf("%s: permission denied: %s", e.Path, e.Hint)
}

func (e *AccessError) Unwrap() error { return e.Err }

// accessHint says how to get read access to a raw device on the given OS;
// root is whether the process already runs as root (Unix).
func accessHint(goos string, root bool) string {
	if root && goos != "windows" {
		return "refused even to root: a container's device policy, a security module (SELinux, AppArmor) or, on macOS, missing Full Disk Access for the terminal blocks it"
	}
	switch goos {
	case "linux":
		return "reading a device needs root or membership of the group that owns it (usually \"disk\"): run with sudo, or `sudo usermod -aG disk $USER` and log in again"
	case "windows":
		return "opening a physical drive needs administrator rights: run from an elevated prompt (right-click the terminal, \"Run as administrator\")"
	case "darwin":
		return "reading a disk needs root: run with sudo; if it is still refused, give the terminal Full Disk Access (System Settings > Privacy & Security > Full Disk Access)"
	}
	return "run as a user allowed to read the device (root)"
}
