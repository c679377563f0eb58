package main

import (
	"fmt"
	"iter"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Tools of the timing table.
const (
	toolOurs     = "ours"
	toolFuse     = "fuse"          // vmfs-fuse + qemu-img convert from the mount
	toolPlain    = "plain"         // qemu-img convert from a plain-filesystem copy
	toolCatNull  = "cat>null"      // cat of the extents to /dev/null
	toolCatFile  = "cat>file"      // cat of the extents to a file
	toolOursCat  = "ours cat>null" // vmfs2vhd cat of the flat extent on the volume to /dev/null
	toolOursTwin = "ours twin"     // ours on the twin datastore (thin, beside thin-2x)
	toolDirect   = "ours --direct" // ours reading the volume with O_DIRECT (dense, raw)
)

// key names a cell: a workload, a tool and an output format ("" when the
// tool has none).
type key struct{ workload, tool, format string }

type results struct {
	cfg        config
	machine    []string // "name: value" lines
	loadBefore string
	loadAfter  string
	started    time.Time
	elapsed    time.Duration
	order      []string // workloads in run order
	cells      map[key][]sample
	failed     map[key]bool
	agreement  []string
	notes      []string
	profile    string
}

func newResults(machine []string, cfg config) *results {
	return &results{cfg: cfg, machine: machine, loadBefore: loadAvg(), started: time.Now(), cells: map[key][]sample{}, failed: map[key]bool{}}
}

func (r *results) add(k key, s sample) {
	if !slices.Contains(r.order, k.workload) {
		r.order = append(r.order, k.workload)
	}
	r.cells[k] = append(r.cells[k], s)
}

func (r *results) samples(k key) []sample { return r.cells[k] }

func (r *results) note(s string) { r.notes = append(r.notes, s) }

// fail records a run that failed; the cell shows "failed" and is not repeated.
func (r *results) fail(k key, err error) {
	r.failed[k] = true
	r.note(fmt.Sprintf("%s %s %s failed: %v", k.workload, k.tool, k.format, err))
}

func (r *results) agree(workload, other string, same bool) {
	verdict := "identical"
	if !same {
		verdict = "**DIFFERENT**"
	}
	r.agreement = append(r.agreement, fmt.Sprintf("%s: our raw output and %s's are %s", workload, other, verdict))
}

func (r *results) finish() {
	r.loadAfter = loadAvg()
	r.elapsed = time.Since(r.started)
}

// median is the median wall time of a cell (0, false when not measured).
func (r *results) median(k key) (time.Duration, bool) {
	s := r.cells[k]
	if len(s) == 0 {
		return 0, false
	}
	d := make([]time.Duration, len(s))
	for i, x := range s {
		d[i] = x.wall
	}
	slices.Sort(d)
	if len(d)%2 == 1 {
		return d[len(d)/2], true
	}
	return (d[len(d)/2-1] + d[len(d)/2]) / 2, true
}

// cpuMedian is the median user+system time of a cell.
func (r *results) cpuMedian(k key) (time.Duration, bool) {
	s := r.cells[k]
	if len(s) == 0 || r.failed[k] || r.timedOut(k) {
		return 0, false
	}
	d := make([]time.Duration, len(s))
	for i, x := range s {
		d[i] = x.cpu
	}
	slices.Sort(d)
	return d[len(d)/2], true
}

func cpuSecs(d time.Duration, ok bool) string {
	if !ok {
		return "—"
	}
	return fmt.Sprintf("%.2f", d.Seconds())
}

// peakRSS is the largest peak RSS of a cell's runs in KiB.
func (r *results) peakRSS(k key) (int64, bool) {
	s := r.cells[k]
	var m int64
	for _, x := range s {
		m = max(m, x.rssKiB)
	}
	return m, len(s) > 0
}

// fuseKey is the FUSE cell ours is compared with: the same format, or raw
// where only raw was run (large disks); approx tells the latter.
func (r *results) fuseKey(wl, f string) (k key, approx bool) {
	k = key{wl, toolFuse, f}
	if _, ok := r.cells[k]; !ok {
		return key{wl, toolFuse, "raw"}, true
	}
	return k, false
}

// floorKey is the cat floor ours is compared with: to a file if measured.
func (r *results) floorKey(wl string) key {
	if _, ok := r.cells[key{wl, toolCatFile, ""}]; ok {
		return key{wl, toolCatFile, ""}
	}
	return key{wl, toolCatNull, ""}
}

// ratioCell is ours over other for the table: "< x" when other timed out.
func (r *results) ratioCell(ours, other key) string {
	s := ratioText(r.ratio(ours, other))
	if s != "—" && r.timedOut(other) {
		s = "< " + s
	}
	return s
}

// ratio is ours over other as a number.
func (r *results) ratio(ours, other key) (float64, bool) {
	a, ok1 := r.median(ours)
	b, ok2 := r.median(other)
	if !ok1 || !ok2 || b == 0 {
		return 0, false
	}
	return a.Seconds() / b.Seconds(), true
}

// timedOut tells whether a cell's median is a lower bound (a run was killed).
func (r *results) timedOut(k key) bool {
	return slices.ContainsFunc(r.cells[k], func(s sample) bool { return s.timedOut })
}

// secs is a cell's median in seconds, "> T" when a run timed out.
func (r *results) secs(k key) string {
	d, ok := r.median(k)
	if r.failed[k] {
		return "failed"
	}
	if !ok {
		return "—"
	}
	s := fmt.Sprintf("%.3f", d.Seconds())
	if r.timedOut(k) {
		s = "> " + s
	}
	return s
}

func mib(kib int64, ok bool) string {
	if !ok {
		return "—"
	}
	return fmt.Sprintf("%.1f", float64(kib)/1024)
}

func ratioText(x float64, ok bool) string {
	if !ok {
		return "—"
	}
	return fmt.Sprintf("%.3f×", x)
}

// kindOf is the workload kind of a name such as thin-2x-vmfs5.
func kindOf(wl string) string { return wl[:strings.LastIndex(wl, "-vmfs")] }

func (r *results) markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# vmfs2vhd benchmark results\n\n")
	p("Generated by `make bench` (`go run ./bench`, issue 7). Mode: %s, %d repetition(s), %d of runs under %s, medians.\n\n", map[bool]string{true: "**-quick (smoke sizes, not the real workloads)**", false: "full"}[r.cfg.quick], r.cfg.reps, max(r.cfg.reps, r.cfg.repsFast), fastRun)
	p("## Machine\n\n")
	for _, m := range r.machine {
		p("- %s\n", m)
	}
	p("- load average (1, 5, 15 min) before: %s; after: %s (other agents may share the machine)\n", r.loadBefore, r.loadAfter)
	p("- total run time: %s\n\n", r.elapsed.Round(time.Second))
	p("## Method\n\n")
	p("- Page cache: %s.\n", map[bool]string{true: "**dropped** (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed run", false: "**not dropped** (warm: sources are in the page cache after the first run; -drop-caches to drop them)"}[r.cfg.dropCaches])
	p("- Times are wall clock of the command plus an fsync of its output file; outputs are deleted (untimed) after every run, and `sync` runs (untimed) before every run so that no run pays for the writeback of another. CPU is the child's user + system time (median), which the disk's noise does not move.\n")
	p("- The first cell of every workload runs once, untimed, before the first repetition.\n")
	p("- Runs alternate order: forward on even repetitions, backward on odd ones; a run slower than %s is not repeated; a run is killed after %s and shown as `> T` (ratios against it as `< x`).\n", r.cfg.slow, r.cfg.timeout)
	p("- ours: `vmfs2vhd convert -q -f FMT VOLUME DISK OUT`. fuse: `vmfs-fuse`/`vmfs6-fuse` mount (not timed) + `qemu-img convert -O raw|vpc|vhdx|qcow2 MNT/DISK OUT`. plain: `qemu-img convert` from a sparse plain-filesystem copy of the VM folder (made once with `vmfs2vhd cat`, zeros left as holes; not timed). cat: `cat` of the chain's extents of the plain copy to /dev/null and to a file (only when the extents total at most %d GiB).\n", catMax>>30)
	p("- On disks over %d GiB the FUSE pipeline is run to raw only (it reads every byte through FUSE whatever the output format); ratios against it are marked *.\n", fuseAllFormatsMax>>30)
	p("- Peak RSS is the child's ru_maxrss (for the FUSE pipeline: qemu-img's; the FUSE daemon is not counted).\n\n")
	r.timingTable(p)
	r.catTable(p)
	r.directTable(p)
	r.twinTable(p)
	r.metaTable(p)
	r.nbdTable(p)
	r.updateTable(p)
	p("## Targets\n\n")
	for _, t := range append(append(r.targets(), r.nbdTargets()...), r.updateTargets()...) {
		p("- %s\n", t)
	}
	if len(r.agreement) > 0 {
		p("\n## Output agreement (raw, untimed)\n\n")
		for _, a := range r.agreement {
			p("- %s\n", a)
		}
	}
	if len(r.notes) > 0 {
		p("\n## Notes\n\n")
		for _, n := range r.notes {
			p("- %s\n", n)
		}
	}
	if r.profile != "" {
		p("\n## Profile of ours (perf, dense)\n\n%s", r.profile)
	}
	return b.String()
}

// convWorkloads are the measured workloads that convert a disk.
func (r *results) convWorkloads() iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, wl := range r.order {
			if kindOf(wl) != kindMeta && !yield(wl) {
				return
			}
		}
	}
}

func (r *results) timingTable(p func(string, ...any)) {
	p("## Conversions (median seconds, ratios, CPU seconds, peak RSS MiB)\n\n")
	p("| workload | fmt | ours | fuse | plain | cat>null | cat>file | ours/fuse | ours/plain | ours/cat | CPU ours | CPU plain | RSS ours | RSS fuse | RSS plain |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for wl := range r.convWorkloads() {
		for _, f := range formats {
			ours := key{wl, toolOurs, f}
			fk, approx := r.fuseKey(wl, f)
			vsFuse := r.ratioCell(ours, fk)
			if approx && vsFuse != "—" {
				vsFuse += "*"
			}
			cells := []string{wl, f,
				r.secs(ours),
				r.secs(key{wl, toolFuse, f}),
				r.secs(key{wl, toolPlain, f}),
				r.secs(key{wl, toolCatNull, ""}),
				r.secs(key{wl, toolCatFile, ""}),
				vsFuse,
				r.ratioCell(ours, key{wl, toolPlain, f}),
				r.ratioCell(ours, r.floorKey(wl)),
				cpuSecs(r.cpuMedian(ours)),
				cpuSecs(r.cpuMedian(key{wl, toolPlain, f})),
				mib(r.peakRSS(ours)),
				mib(r.peakRSS(key{wl, toolFuse, f})),
				mib(r.peakRSS(key{wl, toolPlain, f})),
			}
			p("| %s |\n", strings.Join(cells, " | "))
		}
	}
	p("\n")
}

// pairCells are the table cells comparing a with b: both medians, their
// ratio, both CPU medians.
func (r *results) pairCells(a, b key) string {
	return strings.Join([]string{r.secs(a), r.secs(b), r.ratioCell(a, b),
		cpuSecs(r.cpuMedian(a)), cpuSecs(r.cpuMedian(b))}, " | ")
}

// catTable is issue 3's measure: `vmfs2vhd cat` of the 1 GiB eager flat
// file on the volume against `cat` of the same file on a plain filesystem.
func (r *results) catTable(p func(string, ...any)) {
	var rows []string
	for wl := range r.convWorkloads() {
		ours, plain := key{wl, toolOursCat, ""}, key{wl, toolCatNull, ""}
		if _, ok := r.cells[ours]; !ok {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %s |", wl, r.pairCells(ours, plain)))
	}
	if len(rows) == 0 {
		return
	}
	p("## Reading the flat file to /dev/null (issue 3; median seconds)\n\n")
	p("`vmfs2vhd cat VOLUME vm1/vm1-flat.vmdk` of the dense workload's flat extent on the volume against `cat` of the same file in the plain copy, both from the page cache.\n\n")
	p("| workload | vmfs2vhd cat | cat | ratio | CPU vmfs2vhd cat | CPU cat |\n|---|--:|--:|--:|--:|--:|\n%s\n\n", strings.Join(rows, "\n"))
}

// directTable is issue 13's measure: the dense conversion to raw reading
// the volume through the page cache against reading it with O_DIRECT
// (--direct), which reads large LUNs without filling the cache.
func (r *results) directTable(p func(string, ...any)) {
	var rows []string
	for wl := range r.convWorkloads() {
		direct, cached := key{wl, toolDirect, "raw"}, key{wl, toolOurs, "raw"}
		if _, ok := r.cells[direct]; !ok {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s |", wl, r.pairCells(direct, cached), mib(r.peakRSS(direct)), mib(r.peakRSS(cached))))
	}
	if len(rows) == 0 {
		return
	}
	p("## Cached against --direct reads (issue 13; dense to raw, median seconds)\n\n")
	p("`vmfs2vhd convert --direct` reads the volume with O_DIRECT through the aligned-read layer: every read goes to the disk, nothing is added to the page cache. ")
	p("The cached column reads a volume the setup just wrote, so mostly from memory (unless -drop-caches); the ratio is what bypassing the cache costs when the data would have been cached, and the reason --direct is for LUNs larger than memory, read once.\n\n")
	p("| workload | --direct | cached | ratio | CPU --direct | CPU cached | RSS --direct | RSS cached |\n|---|--:|--:|--:|--:|--:|--:|--:|\n%s\n\n", strings.Join(rows, "\n"))
}

// twinTable shows thin-2x against thin converted in the same rounds.
func (r *results) twinTable(p func(string, ...any)) {
	var rows []string
	for wl := range r.convWorkloads() {
		for _, f := range formats {
			ours, twin := key{wl, toolOurs, f}, key{wl, toolOursTwin, f}
			if _, ok := r.cells[twin]; !ok {
				continue
			}
			rows = append(rows, fmt.Sprintf("| %s | %s | %s |", wl, f, r.pairCells(ours, twin)))
		}
	}
	if len(rows) == 0 {
		return
	}
	p("## Cost follows data: thin-2x against thin in the same rounds (median seconds)\n\n")
	p("The thin-2x workload also builds the thin datastore and converts both in alternating runs, so the ratio does not depend on how the machine did minutes apart.\n\n")
	p("| workload | fmt | thin-2x | thin | ratio | CPU thin-2x | CPU thin |\n|---|---|--:|--:|--:|--:|--:|\n%s\n\n", strings.Join(rows, "\n"))
}

func (r *results) metaTable(p func(string, ...any)) {
	var rows []string
	for k := range r.cells {
		if kindOf(k.workload) == kindMeta {
			rows = append(rows, fmt.Sprintf("| %s | `%s` | %.1f | %s |", k.workload, k.tool,
				float64(must(r.median(k)).Microseconds())/1000, mib(r.peakRSS(k))))
		}
	}
	if len(rows) == 0 {
		return
	}
	slices.Sort(rows)
	p("## Metadata commands on a datastore of 500 files (median ms)\n\n| workload | command | ms | RSS MiB |\n|---|---|--:|--:|\n%s\n\n", strings.Join(rows, "\n"))
}

func must[T any](v T, _ bool) T { return v }

func mapKeys[K comparable, V any](m map[K]V) iter.Seq[K] { return maps.Keys(m) }

func joinArgs(a []string) string { return strings.Join(a, " ") }

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

// machine describes the machine the benchmark ran on.
func machine() []string {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kib int64
				fmt.Sscan(rest, &kib)
				mem = fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	firstLine := func(argv ...string) string {
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			return "not available"
		}
		line, _, _ := strings.Cut(string(out), "\n")
		return strings.TrimSpace(line)
	}
	return []string{
		fmt.Sprintf("CPUs (nproc): %d", runtime.NumCPU()),
		"CPU: " + cpu,
		"memory: " + mem,
		"kernel: " + kernel,
		"go: " + firstLine("go", "version"),
		"qemu-img: " + firstLine("qemu-img", "--version"),
		"filesystem of the work directory: " + firstLine("stat", "-f", "-c", "%T", "."),
		"date: " + time.Now().UTC().Format(time.RFC3339),
	}
}
