//go:build !linux

package raw

import "os"

// fileSeeker returns nil: hole detection is implemented on Linux only.
func fileSeeker(*os.File) DataSeeker { return nil }
