// Package oracle finds the independent tools (qemu-img, debugvmfs,
// debugvmfs6, vmfs-fuse, vhdiinfo, qcowinfo, vmdkinfo …) that judge
// vmfs2vhd's output in tests. A missing tool skips the test, except when
// VMFS2VHD_REQUIRE_ORACLES=1 (set by .ci/run), where it fails it.
package oracle

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Required reports whether missing oracles must fail tests.
func Required() bool { return os.Getenv("VMFS2VHD_REQUIRE_ORACLES") == "1" }

// Find returns the path of tool, or skips t (fails it when oracles are
// required) when the tool is not installed.
func Find(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if _, err := os.Stat(dir + "/" + tool); err == nil {
			return dir + "/" + tool
		}
	}
	Unavailable(t, tool+" is not installed (apt-get install the package named in README.md)")
	return ""
}

// Unavailable skips t with reason, or fails it when oracles are required.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("oracle required (VMFS2VHD_REQUIRE_ORACLES=1): %s", reason)
	}
	t.Skip(reason)
}

// Run runs tool with args (a two-minute limit) and returns its stdout; a
// non-zero exit fails t with the tool's stderr.
func Run(t testing.TB, tool string, args ...string) []byte {
	t.Helper()
	out, stderr, err := RunErr(t, tool, args...)
	if err != nil {
		t.Fatalf("%s %q: %v\nstderr: %s", tool, args, err, stderr)
	}
	return out
}

// RunErr is Run that returns the error and stderr instead of failing.
func RunErr(t testing.TB, tool string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	path := Find(t, tool)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C")
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// DissectVMFS returns the path of the dissect-vmfs judge (Fox-IT's
// dissect.vmfs run as an external process, bundled in shared/oracles beside
// the checkout; VMFS2VHD_DISSECT_VMFS overrides), or skips t as Find does.
// It needs python3.
func DissectVMFS(t testing.TB) string {
	t.Helper()
	Find(t, "python3")
	if p := os.Getenv("VMFS2VHD_DISSECT_VMFS"); p != "" {
		return p
	}
	dir, err := os.Getwd()
	for err == nil {
		if _, e := os.Stat(filepath.Join(dir, "go.mod")); e == nil {
			p := filepath.Join(dir, "..", "shared", "oracles", "dissect-vmfs")
			if _, e := os.Stat(p); e == nil {
				return p
			}
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	Unavailable(t, "dissect-vmfs not found beside the checkout (../shared/oracles/dissect-vmfs; set VMFS2VHD_DISSECT_VMFS)")
	return ""
}

// Dissect runs the dissect-vmfs judge with args; a non-zero exit is
// returned as err with its stderr.
func Dissect(t testing.TB, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	p := DissectVMFS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", append([]string{p}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}
