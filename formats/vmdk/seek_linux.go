//go:build linux

package vmdk

import (
	"errors"
	"os"
	"syscall"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// lseek whence values for sparse files (Linux, every architecture).
const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// seekExtent answers an extent query for a local file from
// SEEK_DATA/SEEK_HOLE. The seeks move the descriptor's offset, which no
// ReadAt uses, and each returns its answer directly, so concurrent calls are
// safe.
func seekExtent(f *os.File, off, size int64) (formats.Extent, error) {
	d, err := f.Seek(off, seekData)
	switch {
	case errors.Is(err, syscall.ENXIO): // no data after off
		return formats.Extent{Off: off, Len: size - off, Kind: formats.Hole}, nil
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.EOPNOTSUPP):
		return formats.Extent{Off: off, Len: size - off, Kind: formats.Data}, nil
	case err != nil:
		return formats.Extent{}, err
	}
	if d > off {
		return formats.Extent{Off: off, Len: min(d, size) - off, Kind: formats.Hole}, nil
	}
	h, err := f.Seek(off, seekHole)
	if err != nil || h <= off {
		return formats.Extent{Off: off, Len: size - off, Kind: formats.Data}, nil
	}
	return formats.Extent{Off: off, Len: min(h, size) - off, Kind: formats.Data}, nil
}
