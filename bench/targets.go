package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// verdict formats one target check: value against limit (value must be ≤
// limit, or < limit when strict), with how far off it is on a failure.
func verdict(what string, value, limit float64, strict bool, unit string) string {
	ok := value <= limit
	op := "≤"
	if strict {
		ok, op = value < limit, "<"
	}
	if ok {
		return fmt.Sprintf("PASS %s: %.3g%s (target %s %.3g%s)", what, value, unit, op, limit, unit)
	}
	return fmt.Sprintf("**FAIL** %s: %.3g%s (target %s %.3g%s; %.0f %% over)", what, value, unit, op, limit, unit, (value/limit-1)*100)
}

// targets checks issue 7's targets (and issue 3's cat target) against the
// measured medians.
func (r *results) targets() []string {
	var out []string
	ratioTarget := func(what string, ours, other key, limit float64, strict bool) {
		if x, ok := r.ratio(ours, other); ok {
			v := verdict(what, x, limit, strict, "×")
			if r.timedOut(other) {
				v += " (the other run timed out: the ratio is an upper bound)"
			}
			out = append(out, v)
		}
	}
	for wl := range r.convWorkloads() {
		for _, f := range formats {
			ours := key{wl, toolOurs, f}
			switch kindOf(wl) {
			case kindDense:
				if f == formats[0] {
					ratioTarget(fmt.Sprintf("%s `vmfs2vhd cat` of the flat file / `cat` of a plain copy (issue 3)", wl),
						key{wl, toolOursCat, ""}, key{wl, toolCatNull, ""}, 1.3, false)
				}
				ratioTarget(fmt.Sprintf("%s %s ours/fuse", wl, f), ours, key{wl, toolFuse, f}, 0.5, false)
				ratioTarget(fmt.Sprintf("%s %s ours/plain qemu-img", wl, f), ours, key{wl, toolPlain, f}, 1.0, false)
			case kindThin:
				fk, approx := r.fuseKey(wl, f)
				what := fmt.Sprintf("%s %s ours/fuse", wl, f)
				if approx {
					what += " (fuse to raw)"
				}
				ratioTarget(what, ours, fk, 0.05, false)
			case kindThin2x:
				if twin := (key{wl, toolOursTwin, f}); len(r.cells[twin]) > 0 {
					ratioTarget(fmt.Sprintf("%s %s ours / thin ours in the same rounds", wl, f), ours, twin, 1.1, true)
					break
				}
				thin := strings.Replace(wl, kindThin2x, kindThin, 1)
				ratioTarget(fmt.Sprintf("%s %s ours / %s ours", wl, f, thin), ours, key{thin, toolOurs, f}, 1.1, true)
			}
		}
	}
	out = append(out, r.rssTarget())
	for _, k := range slices.SortedFunc(mapKeys(r.cells), compareKeys) {
		if kindOf(k.workload) == kindMeta {
			d, _ := r.median(k)
			out = append(out, verdict(fmt.Sprintf("%s `%s`", k.workload, k.tool), float64(d)/float64(time.Millisecond), 200, true, " ms"))
		}
	}
	return out
}

// rssTarget checks that no run of ours peaked above 64 MiB.
func (r *results) rssTarget() string {
	const limit = 64 << 10 // KiB
	var worst key
	var peak int64
	var over []string
	for _, k := range slices.SortedFunc(mapKeys(r.cells), compareKeys) {
		if k.tool != toolOurs && k.tool != toolOursCat && k.tool != toolOursTwin && k.tool != toolDirect && kindOf(k.workload) != kindMeta {
			continue
		}
		rss, _ := r.peakRSS(k)
		if rss > peak {
			worst, peak = k, rss
		}
		if rss > limit {
			over = append(over, fmt.Sprintf("%s %s %s %.1f MiB", k.workload, k.tool, k.format, float64(rss)/1024))
		}
	}
	v := verdict(fmt.Sprintf("peak RSS of every run of ours (worst: %s %s)", worst.workload, strings.TrimSpace(worst.format+" "+metaTool(worst))),
		float64(peak)/1024, 64, false, " MiB")
	if len(over) > 0 {
		v += "; over: " + strings.Join(over, ", ")
	}
	return v
}

func metaTool(k key) string {
	if k.tool == toolOurs {
		return ""
	}
	return k.tool
}

func compareKeys(a, b key) int {
	return strings.Compare(a.workload+"\x00"+a.tool+"\x00"+a.format, b.workload+"\x00"+b.tool+"\x00"+b.format)
}
