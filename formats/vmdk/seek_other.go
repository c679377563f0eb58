//go:build !linux

package vmdk

import (
	"os"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// seekExtent reports the whole rest of a local file as Data.
func seekExtent(_ *os.File, off, size int64) (formats.Extent, error) {
	return formats.Extent{Off: off, Len: size - off, Kind: formats.Data}, nil
}
