package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// profile records `vmfs2vhd convert` of the dense VMFS5 workload to every
// format with perf (an unstripped build, so that Go symbols resolve) and
// keeps the top symbols by self time for the results.
func (b *bench) profile(ctx context.Context, sz sizes) error {
	if _, err := exec.LookPath("perf"); err != nil {
		return fmt.Errorf("perf not found (Debian/Ubuntu: apt-get install linux-perf)")
	}
	dir := filepath.Join(b.cfg.workdir, "profile")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "vmfs2vhd-symbols")
	if _, err := run(ctx, "go", "build", "-o", bin, "."); err != nil {
		return err
	}
	var w workload
	for _, x := range workloads(sz) {
		if x.kind == kindDense {
			w = x
			break
		}
	}
	vol := filepath.Join(dir, "volume.img")
	if _, err := run(ctx, append([]string{bin}, w.mkimageArgs(vol)...)...); err != nil {
		return err
	}
	var sb strings.Builder
	for _, f := range formats {
		data, out := filepath.Join(dir, "perf.data"), filepath.Join(dir, "out."+f)
		if _, err := run(ctx, "perf", "record", "-q", "-F", "999", "-g", "-o", data, "--", bin, "convert", "-q", "-f", f, vol, w.disk, out); err != nil {
			return err
		}
		os.Remove(out)
		rep, err := run(ctx, "perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol", "-g", "none", "--percent-limit", "2")
		if err != nil {
			return err
		}
		fmt.Fprintf(&sb, "%s %s (symbols with ≥ 2 %% self time, all threads):\n\n```\n", w.name, f)
		for line := range strings.Lines(string(rep)) {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				sb.WriteString(strings.TrimRight(line, " \n") + "\n")
			}
		}
		sb.WriteString("```\n\n")
	}
	b.res.profile = sb.String()
	return nil
}
