// Command bench is vmfs2vhd's benchmark harness (`make bench`, issue 7). It
// builds synthetic datastores with `vmfs2vhd mkimage` and times
// `vmfs2vhd convert` against the routes users take today: vmfs-fuse plus
// qemu-img reading through the mount, and qemu-img reading a plain-filesystem
// copy of the VMDK chain, with cat as the I/O floor. It prints a table of
// medians, ratios and peak RSS, checks the targets and writes the same to
// bench/results.md with the machine description.
//
// It installs nothing: a missing reference tool is named and its columns
// skipped.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"time"
)

type config struct {
	reps       int
	repsFast   int
	workdir    string
	keep       bool
	quick      bool
	only       *regexp.Regexp
	dropCaches bool
	slow       time.Duration
	timeout    time.Duration
	bin        string
	out        string
	perf       bool
	verbose    bool
}

func main() {
	var cfg config
	var only string
	flag.IntVar(&cfg.reps, "reps", 5, "repetitions of every timed run (medians are reported)")
	flag.IntVar(&cfg.repsFast, "reps-fast", 15, "repetitions of a run whose first run took under 2s")
	flag.StringVar(&cfg.workdir, "workdir", "", "where images, copies and outputs go (default: a new temporary directory under bench/work, deleted at the end unless -keep)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the work directory")
	flag.BoolVar(&cfg.quick, "quick", false, "small sizes, for a smoke run")
	flag.StringVar(&only, "only", "", "run only the workloads matching this regexp (names: dense-vmfs5, thin-vmfs6, thin-2x-…, chain-…, 2tib-…, meta-…)")
	flag.BoolVar(&cfg.dropCaches, "drop-caches", false, "drop the page cache before every timed run (needs root)")
	flag.DurationVar(&cfg.slow, "slow", 20*time.Second, "a run slower than this is not repeated")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "a run is killed after this and reported as taking more")
	flag.StringVar(&cfg.bin, "bin", "", "vmfs2vhd binary to measure (default: ./vmfs2vhd if present, else built into the work directory)")
	flag.StringVar(&cfg.out, "out", "", "Markdown results file (default: bench/results.md)")
	flag.BoolVar(&cfg.perf, "perf", false, "also profile vmfs2vhd convert on the dense workload with perf and add the top symbols to the results")
	flag.BoolVar(&cfg.verbose, "v", false, "print every run")
	flag.Parse()
	var err error
	if cfg.only, err = regexp.Compile(only); err != nil {
		fatal(err)
	}
	if cfg.reps < 1 {
		fatal(fmt.Errorf("-reps must be at least 1"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := benchmark(ctx, cfg); err != nil {
		stop()
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// benchDir is bench/ when run from the module root (make bench), else ".".
func benchDir() string {
	if st, err := os.Stat("bench"); err == nil && st.IsDir() {
		return "bench"
	}
	return "."
}

func benchmark(ctx context.Context, cfg config) error {
	if cfg.dropCaches && os.Geteuid() != 0 {
		return fmt.Errorf("-drop-caches needs root (it writes /proc/sys/vm/drop_caches)")
	}
	if cfg.workdir == "" {
		base := filepath.Join(benchDir(), "work")
		if err := os.MkdirAll(base, 0o755); err != nil {
			return err
		}
		dir, err := os.MkdirTemp(base, "run-")
		if err != nil {
			return err
		}
		cfg.workdir = dir
	} else if err := os.MkdirAll(cfg.workdir, 0o755); err != nil {
		return err
	}
	if abs, err := filepath.Abs(cfg.workdir); err == nil {
		cfg.workdir = abs
	}
	if !cfg.keep {
		defer os.RemoveAll(cfg.workdir)
	}
	if cfg.out == "" {
		cfg.out = filepath.Join(benchDir(), "results.md")
	}
	bin, err := findBinary(ctx, cfg)
	if err != nil {
		return err
	}
	b := &bench{cfg: cfg, bin: bin, tools: probeTools(), r: &runner{ctx: ctx, timeout: cfg.timeout, dropCaches: cfg.dropCaches, verbose: cfg.verbose}}
	b.res = newResults(machine(), cfg)
	for _, m := range b.tools.missing() {
		fmt.Fprintln(os.Stderr, "bench: "+m)
		b.res.note(m)
	}
	sz := fullSizes
	if cfg.quick {
		sz = quickSizes
	}
	for _, w := range workloads(sz) {
		if !cfg.only.MatchString(w.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "== %s\n", w.name)
		t0 := time.Now()
		if err := b.workload(ctx, w); err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
		fmt.Fprintf(os.Stderr, "   done in %s\n", time.Since(t0).Round(time.Second))
	}
	if err := b.updateWorkloads(ctx); err != nil { // issue 15 (update.go)
		return err
	}
	if cfg.perf {
		if err := b.profile(ctx, sz); err != nil {
			b.res.note("perf profile failed: " + err.Error())
		}
	}
	b.res.finish()
	md := b.res.markdown()
	fmt.Print(md)
	if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: wrote", cfg.out)
	return nil
}

// findBinary returns the vmfs2vhd to measure: -bin, ./vmfs2vhd (what
// `make bench` has just built), or a fresh build of the module.
func findBinary(ctx context.Context, cfg config) (string, error) {
	if cfg.bin != "" {
		return filepath.Abs(cfg.bin)
	}
	if st, err := os.Stat("vmfs2vhd"); err == nil && st.Mode().IsRegular() && benchDir() == "bench" {
		return filepath.Abs("vmfs2vhd")
	}
	bin := filepath.Join(cfg.workdir, "vmfs2vhd")
	fmt.Fprintln(os.Stderr, "bench: building", bin)
	_, err := run(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	return bin, err
}

// tools are the reference programs found on PATH ("" when missing).
type tools struct {
	qemuImg, vmfsFuse, vmfs6Fuse string
	fuseOK                       bool // /dev/fuse usable (root)
}

func probeTools() tools {
	look := func(name string) string {
		p, _ := exec.LookPath(name)
		return p
	}
	_, err := os.Stat("/dev/fuse")
	return tools{qemuImg: look("qemu-img"), vmfsFuse: look("vmfs-fuse"), vmfs6Fuse: look("vmfs6-fuse"),
		fuseOK: err == nil && os.Geteuid() == 0}
}

// fuseDriver is the FUSE driver for a VMFS version, or "".
func (t tools) fuseDriver(vmfs int) string {
	if t.qemuImg == "" || !t.fuseOK {
		return ""
	}
	if vmfs == 6 {
		return t.vmfs6Fuse
	}
	return t.vmfsFuse
}

// missing says what is missing and which columns are skipped for it.
func (t tools) missing() []string {
	var m []string
	if t.qemuImg == "" {
		m = append(m, "qemu-img not found (Debian/Ubuntu: apt-get install qemu-utils): skipping the qemu-img and FUSE pipeline columns")
	}
	if t.vmfsFuse == "" {
		m = append(m, "vmfs-fuse not found (Debian/Ubuntu: apt-get install vmfs-tools): skipping the FUSE pipeline on VMFS5")
	}
	if t.vmfs6Fuse == "" {
		m = append(m, "vmfs6-fuse not found (Debian/Ubuntu: apt-get install vmfs6-tools): skipping the FUSE pipeline on VMFS6")
	}
	if !t.fuseOK {
		m = append(m, "/dev/fuse missing or not root: skipping the FUSE pipeline")
	}
	return m
}

var formats = []string{"raw", "vhd", "vhdx", "qcow2"}

// qemuFormat is qemu-img's name of an output format.
func qemuFormat(f string) string {
	if f == "vhd" {
		return "vpc"
	}
	return f
}

// Limits that keep a full run under half an hour on two cores.
const (
	fuseAllFormatsMax = 1 << 30 // above: the FUSE pipeline runs to raw only (it reads every byte, whatever the format)
	catMax            = 8 << 30 // above: no cat floor (it would read or write that many zeros)
	checkMax          = 8 << 30 // up to: compare our raw output with qemu-img's
)

type bench struct {
	cfg   config
	bin   string
	tools tools
	r     *runner
	res   *results
}

// fastRun: a cell whose first run is quicker than this runs -reps-fast times.
const fastRun = 2 * time.Second

// cell is one thing measured reps times.
type cell struct {
	key key
	job job
}

func (b *bench) workload(ctx context.Context, w workload) error {
	dir := filepath.Join(b.cfg.workdir, w.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !b.cfg.keep {
		defer os.RemoveAll(dir)
	}
	vol := filepath.Join(dir, "volume.img")
	if _, err := run(ctx, append([]string{b.bin}, w.mkimageArgs(vol)...)...); err != nil {
		return err
	}
	if w.kind == kindMeta {
		return b.measure(metaCells(b.bin, vol, w.name))
	}
	var cells []cell
	out := func(tool, f string) string { return filepath.Join(dir, tool+"."+f) }
	var plainDisk, mnt string
	var extents []string
	plain := filepath.Join(dir, "plain")
	if w.refs {
		var err error
		if extents, err = plainCopy(ctx, b.bin, vol, w.vmDir(), plain); err != nil {
			return err
		}
		plainDisk = filepath.Join(plain, w.disk)
		if drv := b.tools.fuseDriver(w.vmfs); drv != "" {
			mnt = filepath.Join(dir, "mnt")
			unmount, err := fuseMount(ctx, drv, vol, mnt, w.disk)
			if err != nil {
				return err
			}
			defer unmount()
		}
	}
	for _, f := range formats {
		o := out("ours", f)
		disk := w.disk
		if w.kind == kindHuge && f == "vhd" {
			// VHD holds at most 2040 GiB (vmfs2vhd refuses more before
			// writing anything): the VHD row converts the 2000 GiB disk.
			disk = hugeVHDDisk
		}
		cells = append(cells, cell{key{w.name, toolOurs, f}, job{argv: []string{b.bin, "convert", "-q", "-f", f, vol, disk, o}, output: o}})
		if w.kind == kindDense && f == "raw" {
			// Issue 13: the same conversion reading the volume with O_DIRECT.
			o := out("direct", f)
			cells = append(cells, cell{key{w.name, toolDirect, f}, job{argv: []string{b.bin, "convert", "-q", "--direct", "-f", f, vol, disk, o}, output: o}})
		}
		if mnt != "" && (w.virtual <= fuseAllFormatsMax || f == "raw") {
			o := out("fuse", f)
			cells = append(cells, cell{key{w.name, toolFuse, f}, job{argv: qemuConvert(f, filepath.Join(mnt, w.disk), o), output: o}})
		}
		if plainDisk != "" && b.tools.qemuImg != "" {
			o := out("plain", f)
			cells = append(cells, cell{key{w.name, toolPlain, f}, job{argv: qemuConvert(f, plainDisk, o), output: o}})
		}
	}
	if w.twin != nil {
		twin := filepath.Join(dir, "twin.img")
		if _, err := run(ctx, append([]string{b.bin}, w.mkimage(w.twin, twin)...)...); err != nil {
			return err
		}
		for _, f := range formats {
			o := out("twin", f)
			cells = append(cells, cell{key{w.name, toolOursTwin, f}, job{argv: []string{b.bin, "convert", "-q", "-f", f, twin, w.disk, o}, output: o}})
		}
	}
	if w.kind == kindDense {
		// Issue 16: the same disk read over NBD from `vmfs2vhd serve` (nbd.go).
		nc, stop, err := b.nbdCells(ctx, w, vol, dir)
		if err != nil {
			return err
		}
		defer stop()
		cells = append(cells, nc...)
	}
	if len(extents) > 0 && apparentSize(extents) <= catMax {
		argv := append([]string{"cat"}, extents...)
		o := out("cat", "out")
		cells = append(cells, cell{key{w.name, toolCatNull, ""}, job{argv: argv, stdout: os.DevNull}},
			cell{key{w.name, toolCatFile, ""}, job{argv: argv, stdout: o, output: o}})
		if w.kind == kindDense {
			// Issue 3: our cat of the flat file on the volume against cat
			// of the same file on a plain filesystem.
			var paths []string
			for _, e := range extents {
				rel, err := filepath.Rel(plain, e)
				if err != nil {
					return err
				}
				paths = append(paths, filepath.ToSlash(rel))
			}
			if len(paths) == 1 {
				cells = append(cells, cell{key{w.name, toolOursCat, ""}, job{argv: []string{b.bin, "cat", vol, paths[0]}, stdout: os.DevNull}})
			}
		}
	}
	if !b.cfg.dropCaches {
		if err := recache(vol, plain); err != nil {
			return err
		}
	}
	if err := b.measure(cells); err != nil {
		return err
	}
	if plainDisk != "" && b.tools.qemuImg != "" && w.virtual <= checkMax {
		return b.check(ctx, w, vol, plainDisk, mnt, dir)
	}
	return nil
}

func qemuConvert(f, src, dst string) []string {
	return []string{"qemu-img", "convert", "-O", qemuFormat(f), src, dst}
}

func apparentSize(paths []string) int64 {
	var n int64
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			n += st.Size()
		}
	}
	return n
}

func metaCells(bin, vol, name string) []cell {
	var cells []cell
	for _, args := range [][]string{{"ls", "-l", "-R"}, {"disks"}, {"info"}} {
		argv := append(append([]string{bin}, args...), vol)
		cells = append(cells, cell{key{name, "vmfs2vhd " + joinArgs(args), ""}, job{argv: argv, stdout: os.DevNull}})
	}
	return cells
}

// measure runs every cell reps times, in forward order on even
// repetitions and backward on odd ones; a cell whose first run took less
// than fastRun runs repsFast times (sub-second runs are the noisiest and
// the cheapest to repeat); a cell whose first run was slower than -slow is
// not repeated, nor one that failed (the failure is reported).
func (b *bench) measure(cells []cell) error {
	if len(cells) > 0 {
		// Warm-up, untimed: the first run after the setup pays for the
		// setup's writes however long we sync (bench/README.md).
		if _, err := b.r.time(cells[0].job); err != nil && b.r.ctx.Err() != nil {
			return b.r.ctx.Err()
		}
	}
	for rep := range max(b.cfg.reps, b.cfg.repsFast) {
		order := slices.Clone(cells)
		if rep%2 == 1 {
			slices.Reverse(order)
		}
		for _, c := range order {
			prev := b.res.samples(c.key)
			if len(prev) > 0 && prev[0].wall > b.cfg.slow || b.res.failed[c.key] {
				continue
			}
			if rep >= b.cfg.reps && (len(prev) == 0 || prev[0].wall >= fastRun) {
				continue
			}
			s, err := b.r.time(c.job)
			if err := b.r.ctx.Err(); err != nil {
				return err
			}
			if err != nil {
				b.res.fail(c.key, err)
				continue
			}
			b.res.add(c.key, s)
		}
	}
	return nil
}

// check converts to raw once more (untimed) with ours, qemu-img on the
// plain copy and the FUSE pipeline, and records whether the outputs agree.
func (b *bench) check(ctx context.Context, w workload, vol, plainDisk, mnt, dir string) error {
	ours := filepath.Join(dir, "check-ours.raw")
	if _, err := run(ctx, b.bin, "convert", "-q", "-f", "raw", vol, w.disk, ours); err != nil {
		return err
	}
	defer os.Remove(ours)
	others := map[string]string{"qemu-img on the plain copy": plainDisk}
	if mnt != "" {
		others["the FUSE pipeline"] = filepath.Join(mnt, w.disk)
	}
	timedOut := map[string]bool{"qemu-img on the plain copy": b.res.timedOut(key{w.name, toolPlain, "raw"}),
		"the FUSE pipeline": b.res.timedOut(key{w.name, toolFuse, "raw"})}
	for _, name := range slices.Sorted(mapKeys(others)) {
		if timedOut[name] {
			b.res.note(fmt.Sprintf("%s: output not compared with %s (its timed run to raw was killed at %s)", w.name, name, b.cfg.timeout))
			continue
		}
		o := filepath.Join(dir, "check-other.raw")
		if _, err := run(ctx, qemuConvert("raw", others[name], o)...); err != nil {
			return err
		}
		same, err := sameFiles(ctx, ours, o)
		os.Remove(o)
		if err != nil {
			return err
		}
		b.res.agree(w.name, name, same)
	}
	return nil
}
