package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Issue 16: the dense disk read through `vmfs2vhd serve` (an NBD export)
// by nbdcopy and qemu-img, against `vmfs2vhd convert` of the same disk in
// the same rounds; and the server's peak RSS under parallel clients.
const (
	toolServeCopy = "nbdcopy from serve"  // nbdcopy of the export to a raw file
	toolServeQemu = "qemu-img from serve" // qemu-img convert -O qcow2 of the export
	toolServeRSS  = "serve, 8 clients"    // the server while 8 nbdcopy … null: read the export
)

// serveClients is the number of parallel clients of the RSS measure.
const serveClients = 8

// serveRSSReps is how many times the parallel-clients measure runs.
const serveRSSReps = 3

// nbdServer is a `vmfs2vhd serve` child process.
type nbdServer struct {
	cmd    *exec.Cmd
	sock   string
	stderr bytes.Buffer
}

// startServe starts `vmfs2vhd serve` of disk on a socket in dir and waits
// until it listens.
func (b *bench) startServe(ctx context.Context, vol, disk, dir string) (*nbdServer, error) {
	s := &nbdServer{sock: filepath.Join(dir, "serve.sock")}
	os.Remove(s.sock)
	s.cmd = exec.CommandContext(ctx, b.bin, "serve", "--socket", s.sock, vol, disk)
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	// The socket appears at its path only once the server listens.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if fi, err := os.Lstat(s.sock); err == nil && fi.Mode().Type() == os.ModeSocket {
			return s, nil
		}
		if time.Now().After(deadline) {
			s.cmd.Process.Kill()
			s.cmd.Wait()
			return nil, fmt.Errorf("vmfs2vhd serve did not listen within 10 s: %s", strings.TrimSpace(s.stderr.String()))
		}
	}
}

func (s *nbdServer) uri(export string) string {
	return "nbd+unix:///" + export + "?socket=" + s.sock
}

// stop interrupts the server and returns its CPU time and peak RSS.
func (s *nbdServer) stop() (sample, error) {
	s.cmd.Process.Signal(os.Interrupt)
	err := s.cmd.Wait()
	var smp sample
	if s.cmd.ProcessState != nil {
		if ru, ok := s.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			smp.rssKiB = ru.Maxrss
			smp.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	if err != nil {
		return smp, fmt.Errorf("vmfs2vhd serve: %w: %s", err, strings.TrimSpace(s.stderr.String()))
	}
	return smp, nil
}

// nbdCells measures the server under parallel clients (untimed rounds of
// their own), then starts the server the returned cells read from; stop
// ends it. Without nbdcopy it notes so and returns no cells.
func (b *bench) nbdCells(ctx context.Context, w workload, vol, dir string) (cells []cell, stop func(), err error) {
	nbdcopy, _ := exec.LookPath("nbdcopy")
	if nbdcopy == "" {
		b.res.note("nbdcopy not found (Debian/Ubuntu: apt-get install libnbd-bin): skipping the `vmfs2vhd serve` rows (issue 16)")
		return nil, func() {}, nil
	}
	for range serveRSSReps {
		s, err := b.serveParallel(ctx, w, vol, dir, nbdcopy)
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if err != nil {
			b.res.fail(key{w.name, toolServeRSS, ""}, err)
			break
		}
		b.res.add(key{w.name, toolServeRSS, ""}, s)
	}
	srv, err := b.startServe(ctx, vol, w.disk, dir)
	if err != nil {
		return nil, nil, err
	}
	stop = func() {
		if _, err := srv.stop(); err != nil && ctx.Err() == nil {
			b.res.note(fmt.Sprintf("%s: %v", w.name, err))
		}
	}
	raw, qcow := filepath.Join(dir, "serve.raw"), filepath.Join(dir, "serve.qcow2")
	cells = append(cells, cell{key{w.name, toolServeCopy, "raw"}, job{argv: []string{nbdcopy, srv.uri(w.disk), raw}, output: raw}})
	if b.tools.qemuImg != "" {
		cells = append(cells, cell{key{w.name, toolServeQemu, "qcow2"}, job{argv: []string{b.tools.qemuImg, "convert", "-f", "raw", "-O", "qcow2", srv.uri(w.disk), qcow}, output: qcow}})
	}
	return cells, stop, nil
}

// serveParallel starts a server, runs serveClients `nbdcopy URI null:` at
// once and stops it: the sample's wall time is the clients' (until the
// last one is done), its CPU and RSS the server's.
func (b *bench) serveParallel(ctx context.Context, w workload, vol, dir, nbdcopy string) (sample, error) {
	srv, err := b.startServe(ctx, vol, w.disk, dir)
	if err != nil {
		return sample{}, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, serveClients)
	for i := range serveClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, nbdcopy, srv.uri(w.disk), "null:")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("nbdcopy %s null: %w: %s", srv.uri(w.disk), err, strings.TrimSpace(stderr.String()))
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	s, err := srv.stop()
	for _, e := range errs {
		if e != nil {
			return sample{}, e
		}
	}
	if err != nil {
		return sample{}, err
	}
	s.wall = wall
	if b.cfg.verbose {
		fmt.Fprintf(os.Stderr, "    %6.3fs %6d KiB  vmfs2vhd serve with %d × nbdcopy null:\n", wall.Seconds(), s.rssKiB, serveClients)
	}
	return s, nil
}

// nbdTable shows the dense disk read through `vmfs2vhd serve` against
// `vmfs2vhd convert` in the same rounds, and the server under parallel
// clients.
func (r *results) nbdTable(p func(string, ...any)) {
	var rows []string
	for wl := range r.convWorkloads() {
		par := key{wl, toolServeRSS, ""}
		if _, ok := r.cells[par]; !ok {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s |", wl,
			strings.Join([]string{r.secs(key{wl, toolServeCopy, "raw"}), r.secs(key{wl, toolOurs, "raw"}), r.ratioCell(key{wl, toolServeCopy, "raw"}, key{wl, toolOurs, "raw"})}, " | "),
			strings.Join([]string{r.secs(key{wl, toolServeQemu, "qcow2"}), r.secs(key{wl, toolOurs, "qcow2"}), r.ratioCell(key{wl, toolServeQemu, "qcow2"}, key{wl, toolOurs, "qcow2"})}, " | "),
			r.secs(par), cpuSecs(r.cpuMedian(par)), mib(r.peakRSS(par))))
	}
	if len(rows) == 0 {
		return
	}
	p("## Reading the disk over NBD from `vmfs2vhd serve` (issue 16; dense, median seconds)\n\n")
	p("`vmfs2vhd serve --socket S VOLUME vm1/vm1.vmdk` runs (untimed) while `nbdcopy nbd+unix:///vm1/vm1.vmdk?socket=S OUT.raw` and `qemu-img convert -f raw -O qcow2 nbd+unix:///… OUT.qcow2` are timed in the same rounds as `vmfs2vhd convert -f raw|qcow2` of the disk. ")
	p("The parallel columns: a fresh server while %d `nbdcopy … null:` read the whole disk at once (%d rounds): their wall time, and the server's CPU time and peak RSS.\n\n", serveClients, serveRSSReps)
	p("| workload | nbdcopy from serve | convert -f raw | ratio | qemu-img -O qcow2 from serve | convert -f qcow2 | ratio | %d clients | server CPU | server RSS MiB |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n%s\n\n", serveClients, strings.Join(rows, "\n"))
}

// nbdTargets are issue 16's targets: reading through serve within 1.5× of
// converting, the server within 64 MiB under parallel clients.
func (r *results) nbdTargets() []string {
	var out []string
	for wl := range r.convWorkloads() {
		for _, c := range []struct {
			serve key
			f     string
		}{{key{wl, toolServeCopy, "raw"}, "raw"}, {key{wl, toolServeQemu, "qcow2"}, "qcow2"}} {
			if x, ok := r.ratio(c.serve, key{wl, toolOurs, c.f}); ok {
				out = append(out, verdict(fmt.Sprintf("%s %s / `convert -f %s` (issue 16)", wl, c.serve.tool, c.f), x, 1.5, false, "×"))
			}
		}
		if rss, ok := r.peakRSS(key{wl, toolServeRSS, ""}); ok {
			out = append(out, verdict(fmt.Sprintf("%s peak RSS of `vmfs2vhd serve` under %d parallel nbdcopy (issue 16)", wl, serveClients), float64(rss)/1024, 64, false, " MiB"))
		}
	}
	return out
}
