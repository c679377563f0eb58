package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Issue 15: warm migration. A 16 GiB thin disk whose base holds 40 % data
// and one snapshot writing 1 % of the disk: `convert --update` from the
// base to the leaf against a full conversion of the leaf, in the same
// rounds. And the same delta in bytes on a 16 GiB and a 64 GiB disk whose
// bases have the same (lower) density: an update costs what the delta
// holds, not what the disk measures. (The density is kept equal because
// VHD and VHDX allocate whole blocks where the base had none: a sparser
// base around the same delta means more block bytes to write, which is
// layout, not size.)
const (
	toolUpdate   = "ours --update"      // convert --update, base → leaf (40 % base)
	toolUpdFull  = "ours, leaf in full" // convert of that leaf, in the same rounds
	toolUpdSmall = "ours --update, 16 GiB sparse"
	toolUpdBig   = "ours --update, 64 GiB sparse"
	updateWL     = "update"
	updateReps   = 3    // runs at most (full conversions take seconds)
	updateBase   = 0.40 // the base's data on the ratio disk
	updateSparse = 0.05 // the base's data on the two scale disks
	updateDelta  = 0.01 // the snapshot's data: this share of the 16 GiB disk, on every disk
	updateRatio  = 0.05 // target: update / full conversion of the leaf
	updateGrowth = 1.5  // target: update on the 64 GiB disk / on the 16 GiB one
	updateLeaf   = "vm1/vm1-000001.vmdk"
)

// updateDisk is one datastore of the update workload.
type updateDisk struct {
	size int64
	base float64 // share of the disk holding the base's data
	tool string  // its update cell
	vol  string
}

// updateDisks are the ratio disk and the two scale disks (-quick: 1/16 of
// the sizes).
func updateDisks(quick bool) []*updateDisk {
	small, big := int64(16<<30), int64(64<<30)
	if quick {
		small, big = 1<<30, 4<<30
	}
	return []*updateDisk{{small, updateBase, toolUpdate, ""}, {small, updateSparse, toolUpdSmall, ""}, {big, updateSparse, toolUpdBig, ""}}
}

// updateWorkloads runs the update workload on VMFS5 and VMFS6 (names
// update-vmfs5, update-vmfs6; -only picks them like the others).
func (b *bench) updateWorkloads(ctx context.Context) error {
	for _, v := range []int{5, 6} {
		name := fmt.Sprintf("%s-vmfs%d", updateWL, v)
		if !b.cfg.only.MatchString(name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "== %s\n", name)
		if err := b.updateWorkload(ctx, name, v); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

func (b *bench) updateWorkload(ctx context.Context, name string, vmfs int) error {
	dir := filepath.Join(b.cfg.workdir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !b.cfg.keep {
		defer os.RemoveAll(dir)
	}
	w := workload{vmfs: vmfs}
	pct := func(x float64) string {
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.6f", x*100), "0"), ".")
	}
	disks := updateDisks(b.cfg.quick)
	delta := float64(disks[0].size) * updateDelta // bytes, the same on every disk
	for i, d := range disks {
		d.vol = filepath.Join(dir, fmt.Sprintf("volume%d.img", i))
		spec := []string{"--disk", diskArg("vm1", "thin", d.size, pct(d.base)),
			"--snapshot", "vm1/vm1.vmdk,fill=" + pct(delta/float64(d.size))}
		if _, err := run(ctx, append([]string{b.bin}, w.mkimage(spec, d.vol)...)...); err != nil {
			return err
		}
	}
	reps := min(b.cfg.reps, updateReps)
	for _, f := range formats {
		full := key{name, toolUpdFull, f}
		out := filepath.Join(dir, "out."+f)
		for rep := range reps {
			if err := ctx.Err(); err != nil {
				return err
			}
			// The leaf in full (the output is synced, timed, and removed).
			o := filepath.Join(dir, "full."+f)
			s, err := b.r.time(job{argv: []string{b.bin, "convert", "-q", "-f", f, disks[0].vol, updateLeaf, o}, output: o})
			os.Remove(o + ".vmfs2vhd.json") // its record (written, as by any conversion)
			if err != nil {
				b.res.fail(full, err)
			} else {
				b.res.cells[full] = append(b.res.cells[full], s)
			}
			for _, d := range disks {
				k := key{name, d.tool, f}
				// Untimed: a fresh conversion of the base, with its record.
				if _, err := run(ctx, b.bin, "convert", "-q", "--force", "--base", "-f", f, d.vol, updateLeaf, out); err != nil {
					return err
				}
				// Timed: the update (it syncs the output itself, stage by
				// stage, and its record); its --json result says what it
				// applied.
				js := filepath.Join(dir, "update.json")
				s, err := b.r.time(job{argv: []string{b.bin, "convert", "-q", "--update", "--json", "-f", f, d.vol, updateLeaf, out}, stdout: js})
				if err != nil {
					b.res.fail(k, err)
					continue
				}
				b.res.cells[k] = append(b.res.cells[k], s)
				if rep == reps-1 {
					b.res.note(updateApplied(name, f, d, js))
				}
			}
		}
		os.Remove(out)
		os.Remove(out + ".vmfs2vhd.json")
	}
	return nil
}

// updateApplied reads an update's --json result into a note.
func updateApplied(name, f string, d *updateDisk, path string) string {
	var r struct {
		Update struct {
			Ranges       int   `json:"ranges"`
			ChangedBytes int64 `json:"changed_bytes"`
			AppliedBytes int64 `json:"applied_bytes"`
		} `json:"update"`
	}
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		return fmt.Sprintf("%s %s: the update's --json result: %v", name, f, err)
	}
	return fmt.Sprintf("%s %s `--update`, %s disk, base %.0f %%: %d changed ranges, %.1f MiB changed, %.1f MiB written", name, f, sizeArg(d.size), d.base*100,
		r.Update.Ranges, float64(r.Update.ChangedBytes)/(1<<20), float64(r.Update.AppliedBytes)/(1<<20))
}

// updateTable shows the update workload.
func (r *results) updateTable(p func(string, ...any)) {
	var rows []string
	for _, k := range sortedKeys(r) {
		if k.tool != toolUpdate {
			continue
		}
		full := key{k.workload, toolUpdFull, k.format}
		small, big := key{k.workload, toolUpdSmall, k.format}, key{k.workload, toolUpdBig, k.format}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", k.workload, k.format,
			r.secs(k), r.secs(full), r.ratioCell(k, full), r.secs(small), r.secs(big), r.ratioCell(big, small),
			cpuSecs(r.cpuMedian(k)), mib(r.peakRSS(k))))
	}
	if len(rows) == 0 {
		return
	}
	d := updateDisks(r.cfg.quick)
	p("## Warm migration: `convert --update` (issue 15; median seconds)\n\n")
	p("update: `convert --update VOLUME LEAF OUT` of an output converted (untimed, before every run) with `--base`; it syncs the output itself. ")
	p("Left: a %s thin disk whose base holds %.0f %% data and one snapshot writing %.0f %% of it; full: `convert VOLUME LEAF OUT` of that leaf in the same rounds, with an fsync. ", sizeArg(d[0].size), updateBase*100, updateDelta*100)
	p("Right: the same delta in bytes on a %s and a %s disk whose bases both hold %.0f %% (the same density, so that the output blocks around the delta are alike). At most %d runs each.\n\n", sizeArg(d[1].size), sizeArg(d[2].size), updateSparse*100, updateReps)
	p("| workload | fmt | update | full | update/full | update, %s | update, %s | ratio | CPU update | RSS update |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n%s\n\n",
		sizeArg(d[1].size), sizeArg(d[2].size), strings.Join(rows, "\n"))
}

// updateTargets: an update within 0.05× of a full conversion of the leaf,
// and within 1.5× on a disk four times larger with the same delta.
func (r *results) updateTargets() []string {
	var out []string
	for _, k := range sortedKeys(r) {
		if k.tool != toolUpdate {
			continue
		}
		if x, ok := r.ratio(k, key{k.workload, toolUpdFull, k.format}); ok {
			out = append(out, verdict(fmt.Sprintf("%s %s `--update` / full conversion of the leaf (issue 15)", k.workload, k.format), x, updateRatio, false, "×"))
		}
		if x, ok := r.ratio(key{k.workload, toolUpdBig, k.format}, key{k.workload, toolUpdSmall, k.format}); ok {
			d := updateDisks(r.cfg.quick)
			out = append(out, verdict(fmt.Sprintf("%s %s `--update` on the %s disk / on the %s one, same delta (issue 15)", k.workload, k.format, sizeArg(d[2].size), sizeArg(d[1].size)), x, updateGrowth, false, "×"))
		}
	}
	return out
}

// sortedKeys are the measured cells in a stable order.
func sortedKeys(r *results) []key { return slices.SortedFunc(mapKeys(r.cells), compareKeys) }
