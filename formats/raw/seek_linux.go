//go:build linux

package raw

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// lseek whence values of Linux (golang.org/x/sys/unix.SEEK_DATA/SEEK_HOLE).
const (
	seekData = 3
	seekHole = 4
)

// osSeeker implements DataSeeker with lseek on an *os.File.
type osSeeker struct{ f *os.File }

// fileSeeker returns a DataSeeker for f, or nil when f's file system does
// not support SEEK_HOLE.
func fileSeeker(f *os.File) DataSeeker {
	s := osSeeker{f}
	if _, err := s.SeekHole(0); err != nil {
		return nil
	}
	return s
}

func (s osSeeker) SeekData(off int64) (int64, error) {
	n, err := s.f.Seek(off, seekData)
	if errors.Is(err, syscall.ENXIO) {
		return 0, io.EOF // no data at or after off
	}
	return n, err
}

func (s osSeeker) SeekHole(off int64) (int64, error) {
	return s.f.Seek(off, seekHole)
}
