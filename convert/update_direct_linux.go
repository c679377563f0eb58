//go:build linux

package convert

import (
	"os"

	"golang.org/x/sys/unix"
)

// openDirect opens path once more, for direct I/O (O_DIRECT): Apply writes
// the update's large data chunks through it, past the page cache. It
// returns the alignment that direct writes need of their file offset,
// length and buffer address — what statx reports (STATX_DIOALIGN), else
// 4096, and at least the page size, so that a direct write never shares a
// page with a write through the page cache — or a nil file when the file
// system does not do direct I/O on it.
func openDirect(path string) (*os.File, int64) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, 0
	}
	align := int64(4096)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, 0
	}
	var stx unix.Statx_t
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.Statx(int(fd), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx)
	}); err == nil && serr == nil && stx.Mask&unix.STATX_DIOALIGN != 0 {
		if stx.Dio_offset_align == 0 {
			f.Close() // the kernel says: no direct I/O on this file
			return nil, 0
		}
		align = int64(max(stx.Dio_offset_align, stx.Dio_mem_align))
	}
	return f, max(align, int64(os.Getpagesize()))
}
