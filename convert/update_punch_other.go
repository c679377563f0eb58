//go:build !linux

package convert

import (
	"errors"
	"os"
)

// punchHole is not available here: zero ranges are written instead.
func punchHole(f *os.File, off, n int64) error {
	return errors.New("hole punching is not supported on this system")
}
