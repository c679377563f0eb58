//go:build !unix

package cli

import "github.com/vmfs2vhd/vmfs2vhd/formats"

// checkFreeSpace is not implemented here; a full disk fails the write.
func checkFreeSpace(string, formats.Layout) error { return nil }
