//go:build !linux

package convert

import "os"

// openDirect returns no file here: updates write through the page cache.
func openDirect(path string) (*os.File, int64) { return nil, 0 }
