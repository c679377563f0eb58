//go:build unix

package cli

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// checkFreeSpace refuses to start when the target filesystem cannot hold
// what the layout writes (its metadata and data pieces; holes cost nothing).
func checkFreeSpace(dir string, l formats.Layout) error {
	var need int64
	for p := range l.Pieces() {
		if p.Meta != nil || p.Src >= 0 {
			need += p.Len
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil // unknown: let the writes tell
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if free < need {
		return fmt.Errorf("%s: %s free, the output needs up to %s", dir, formatSize(free), formatSize(need))
	}
	return nil
}
