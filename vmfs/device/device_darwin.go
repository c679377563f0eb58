//go:build darwin

package device

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// <sys/disk.h>
const (
	dkiocGetBlockSize  = 0x40046418 // DKIOCGETBLOCKSIZE: _IOR('d', 24, uint32_t)
	dkiocGetBlockCount = 0x40086419 // DKIOCGETBLOCKCOUNT: _IOR('d', 25, uint64_t)
)

// openOS opens a macOS disk (/dev/diskN, /dev/rdiskN, slices) or an image
// file. Disks: size = DKIOCGETBLOCKCOUNT × DKIOCGETBLOCKSIZE, the block
// size being the logical sector size raw reads must be aligned to. Direct
// sets F_NOCACHE.
func openOS(path string, opts Options) (*Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	d := &Device{name: path, f: f}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	if opts.Direct {
		rc.Control(func(fd uintptr) {
			_, err := unix.FcntlInt(fd, unix.F_NOCACHE, 1)
			d.direct = err == nil
		})
	}
	if st.Mode().IsRegular() {
		d.size = st.Size()
		return d, nil
	}
	d.raw = st.Mode()&os.ModeDevice != 0
	var bs, count int
	var berr, cerr error
	rc.Control(func(fd uintptr) {
		// IoctlGetInt passes a pointer to a zeroed 64-bit int: the
		// kernel's uint32 lands in its low half (little-endian).
		bs, berr = unix.IoctlGetInt(int(fd), dkiocGetBlockSize)
		count, cerr = unix.IoctlGetInt(int(fd), dkiocGetBlockCount)
	})
	if berr == nil && cerr == nil {
		if size, err := blocksToSize(uint64(count), uint32(bs)); err == nil {
			d.size, d.sector = size, bs
			return d, nil
		}
	}
	if d.size, err = f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// List returns the raw disks and slices in /dev (/dev/rdiskN, whole disks
// first), for Scan without arguments.
func List() ([]string, error) {
	ents, err := os.ReadDir("/dev")
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return darwinDevices(names), nil
}
