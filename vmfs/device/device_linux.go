//go:build linux

package device

import (
	"errors"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openOS opens a Linux block device or an image file. Block devices: size
// from BLKGETSIZE64, logical sector size from BLKSSZGET. Direct adds
// O_DIRECT; a file system that refuses it (tmpfs answers EINVAL) gets a
// cached open instead.
func openOS(path string, opts Options) (*Device, error) {
	d := &Device{name: path}
	var err error
	if opts.Direct {
		d.f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
		if err == nil {
			d.direct = true
		} else if errors.Is(err, syscall.EINVAL) {
			err = nil
		} else {
			return nil, err
		}
	}
	if d.f == nil {
		if d.f, err = os.Open(path); err != nil {
			return nil, err
		}
	}
	st, err := d.f.Stat()
	if err != nil {
		d.f.Close()
		return nil, err
	}
	switch {
	case st.Mode().IsRegular():
		d.size = st.Size()
		if d.direct {
			d.align = dioAlign(d.f)
		}
		return d, nil
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		d.raw = true
		var size uint64
		var ss uint32
		var serr, berr error
		if rc, err := d.f.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) {
				size, berr = unix.IoctlGetUint64(int(fd), unix.BLKGETSIZE64)
				ss, serr = unix.IoctlGetUint32(int(fd), unix.BLKSSZGET)
			})
		}
		if berr == nil && size <= 1<<62 {
			d.size = int64(size)
		} else if d.size, err = d.f.Seek(0, io.SeekEnd); err != nil {
			d.f.Close()
			return nil, err
		}
		if serr == nil && validSector(int64(ss)) {
			d.sector = int(ss)
		}
		return d, nil
	default:
		// Character devices and the rest: whatever seeking says.
		d.raw = st.Mode()&os.ModeDevice != 0
		if d.size, err = d.f.Seek(0, io.SeekEnd); err != nil {
			d.f.Close()
			return nil, err
		}
		return d, nil
	}
}

// dioAlign is the alignment O_DIRECT reads of a regular file need
// (statx STATX_DIOALIGN, Linux 6.1+); 4 KiB when the kernel does not say,
// which satisfies every file system seen.
func dioAlign(f *os.File) int {
	a := int64(defaultSect)
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			var st unix.Statx_t
			if unix.Statx(int(fd), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st) == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
				if m := int64(max(st.Dio_offset_align, st.Dio_mem_align)); validSector(m) {
					a = max(a, m)
				}
			}
		})
	}
	return int(a)
}

// List returns the attached block devices (/sys/block: disks with a
// medium, then their partitions), for Scan without arguments.
func List() ([]string, error) { return sysBlockDevices("/sys/block") }
