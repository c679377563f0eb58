// Package devicetest helps tests of code that reads devices: a fake device
// that fails every read not aligned to its sector size (the stand-in for
// Windows and macOS raw devices and for O_DIRECT), and Linux loop devices
// over image files.
package devicetest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"
)

// ErrUnaligned is the error of a Strict read that is not sector-aligned.
var ErrUnaligned = errors.New("devicetest: unaligned read")

// Strict is an io.ReaderAt over R that fails every read whose offset,
// length or buffer address is not a multiple of Sector, as a Windows
// \\.\PhysicalDriveN or a macOS /dev/rdiskN does. It counts reads and
// rejected reads; it is safe for concurrent use.
type Strict struct {
	R      io.ReaderAt
	Sector int64
	Reads  atomic.Int64
	Bad    atomic.Int64
}

// ReadAt implements io.ReaderAt.
func (s *Strict) ReadAt(p []byte, off int64) (int, error) {
	s.Reads.Add(1)
	addr := int64(uintptr(unsafe.Pointer(unsafe.SliceData(p))) % uintptr(s.Sector))
	if off%s.Sector != 0 || int64(len(p))%s.Sector != 0 || addr != 0 {
		s.Bad.Add(1)
		return 0, fmt.Errorf("%w: %d bytes at offset %d into a buffer at address %% %d = %d", ErrUnaligned, len(p), off, s.Sector, addr)
	}
	return s.R.ReadAt(p, off)
}

// RequireOracles reports whether VMFS2VHD_REQUIRE_ORACLES=1 asks tests to
// fail instead of skipping when a tool or facility is missing.
func RequireOracles() bool { return os.Getenv("VMFS2VHD_REQUIRE_ORACLES") == "1" }

// LoopAvailable reports why loop devices cannot be set up here ("" when
// they can).
func LoopAvailable() string {
	switch {
	case runtime.GOOS != "linux":
		return "loop devices are Linux only"
	case os.Geteuid() != 0:
		return "loop devices need root"
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return "no /dev/loop-control"
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		return "no losetup (util-linux)"
	}
	return ""
}

// skipOrFatal skips the test, or fails it under VMFS2VHD_REQUIRE_ORACLES=1
// on Linux as root, where loop devices must work.
func skipOrFatal(t testing.TB, msg string) {
	t.Helper()
	if RequireOracles() && runtime.GOOS == "linux" && os.Geteuid() == 0 {
		t.Fatalf("loop devices: %s (VMFS2VHD_REQUIRE_ORACLES=1)", msg)
	}
	t.Skipf("skipping: loop devices: %s", msg)
}

// Loop attaches file read-only to a free loop device with the given logical
// sector size (0 = the default, 512) and returns its path; the test's
// cleanup detaches it. Without loop devices the test is skipped.
func Loop(t testing.TB, file string, sectorSize int) string {
	t.Helper()
	if why := LoopAvailable(); why != "" {
		skipOrFatal(t, why)
	}
	args := []string{"-r", "--find", "--show"}
	if sectorSize != 0 {
		args = append(args, "--sector-size", strconv.Itoa(sectorSize))
	}
	var out []byte
	var err error
	// Two tests may grab the same free device at once; losetup then fails
	// with EBUSY: try again.
	for range 5 {
		out, err = exec.Command("losetup", append(args, file)...).CombinedOutput()
		if err == nil {
			break
		}
	}
	if err != nil {
		skipOrFatal(t, fmt.Sprintf("losetup %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out))))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}
