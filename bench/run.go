package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sample is one timed run.
type sample struct {
	wall     time.Duration
	cpu      time.Duration // user + system time of the child
	rssKiB   int64         // peak RSS of the child (Linux: KiB)
	timedOut bool          // killed at the run timeout: wall is a lower bound
}

// job is one command to time: the process, where its stdout goes and the
// output file to fsync (timed) and delete (untimed) afterwards.
type job struct {
	argv   []string
	stdout string // file to write stdout to ("/dev/null" included); empty: discarded
	output string // output file, synced before the clock stops and removed after
}

// runner runs jobs, optionally dropping the page cache before each.
type runner struct {
	ctx        context.Context
	timeout    time.Duration // a run is killed after this
	dropCaches bool
	verbose    bool
}

// time runs j once and measures it.
func (r *runner) time(j job) (sample, error) {
	if r.dropCaches {
		if err := dropCaches(); err != nil {
			return sample{}, err
		}
	} else {
		// Untimed: what earlier runs left dirty (and the discards of the
		// outputs they deleted) is not charged to this one.
		syscall.Sync()
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, j.argv[0], j.argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if j.stdout != "" {
		f, err := os.Create(j.stdout)
		if err != nil {
			return sample{}, err
		}
		defer f.Close()
		cmd.Stdout = f
	}
	start := time.Now()
	err := cmd.Run()
	if err == nil && j.output != "" {
		err = fsync(j.output)
	}
	wall := time.Since(start)
	if j.output != "" {
		os.Remove(j.output)
	}
	s := sample{wall: wall}
	switch {
	case err != nil && ctx.Err() == context.DeadlineExceeded && r.ctx.Err() == nil:
		s = sample{wall: r.timeout, timedOut: true}
	case err != nil:
		return sample{}, fmt.Errorf("%s: %w: %s", strings.Join(j.argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		s.rssKiB = ru.Maxrss
		s.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if r.verbose {
		fmt.Fprintf(os.Stderr, "    %6.3fs %6d KiB  %s\n", wall.Seconds(), s.rssKiB, strings.Join(j.argv, " "))
	}
	return s, nil
}

func fsync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// run runs a command untimed (setup), returning its stdout.
func run(ctx context.Context, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// plainCopy copies every file of the VM folder dir of volume vol to
// plain/dir with `vmfs2vhd cat`, leaving runs of zeros as holes (what
// `fallocate -d` would do afterwards, without ever writing the zeros).
// It returns the paths of the extents, in name order.
func plainCopy(ctx context.Context, bin, vol, dir, plain string) ([]string, error) {
	out, err := run(ctx, bin, "ls", "--json", vol, dir)
	if err != nil {
		return nil, err
	}
	var entries []struct{ Name, Path, Type string }
	if err := json.Unmarshal(out, &entries); err != nil {
		return nil, fmt.Errorf("ls --json: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(plain, dir), 0o755); err != nil {
		return nil, err
	}
	var extents []string
	for _, e := range entries {
		if e.Type != "file" {
			continue
		}
		dst := filepath.Join(plain, e.Path)
		if err := copyFile(ctx, bin, vol, e.Path, dst); err != nil {
			return nil, err
		}
		if isExtent(e.Name) {
			extents = append(extents, dst)
		}
	}
	return extents, nil
}

// copyFile copies one file sparsely. A flat extent X-flat.vmdk holds
// exactly the disk of its descriptor X.vmdk, so it is written by converting
// that to raw (which leaves holes, and is fast on 64 GiB of mostly
// nothing); everything else goes through sparseCat.
func copyFile(ctx context.Context, bin, vol, path, dst string) error {
	if desc, ok := strings.CutSuffix(path, "-flat.vmdk"); ok {
		_, err := run(ctx, bin, "convert", "-q", "-f", "raw", vol, desc+".vmdk", dst)
		return err
	}
	return sparseCat(ctx, bin, vol, path, dst)
}

// sparseCat writes the bytes of `vmfs2vhd cat vol path` to dst, seeking
// over all-zero MiBs.
func sparseCat(ctx context.Context, bin, vol, path, dst string) error {
	cmd := exec.CommandContext(ctx, bin, "cat", vol, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	src, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := cmd.Start(); err != nil {
		return err
	}
	buf, zero := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for err == nil {
		var n int
		n, err = io.ReadFull(src, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := f.WriteAt(buf[:n], off); werr != nil {
				err = werr
			}
		}
		off += int64(n)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = f.Truncate(off)
	}
	if werr := cmd.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("cat %s: %w: %s", path, werr, strings.TrimSpace(stderr.String()))
	}
	return err
}

// fuseMount mounts vol with the FUSE driver drv on mnt and waits until the
// disk descriptor is visible. The returned function unmounts.
func fuseMount(ctx context.Context, drv, vol, mnt, disk string) (func(), error) {
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	if _, err := run(ctx, drv, vol, mnt); err != nil {
		return nil, err
	}
	unmount := func() {
		if _, err := run(context.Background(), "umount", mnt); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(mnt, disk)); err == nil {
			return unmount, nil
		}
		if time.Now().After(deadline) {
			unmount()
			return nil, fmt.Errorf("%s %s %s: %s did not appear", drv, vol, mnt, disk)
		}
	}
}

// sameFiles tells whether two files have the same bytes (cmp -s).
func sameFiles(ctx context.Context, a, b string) (bool, error) {
	err := exec.CommandContext(ctx, "cmp", "-s", a, b).Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false, nil
	}
	return err == nil, err
}

// recache evicts every regular file under the given paths from the page
// cache and reads its data back once, sequentially in 2 MiB reads (holes
// are skipped with SEEK_DATA/SEEK_HOLE), so that every source a timed run
// reads warm is cached the same way. Otherwise the generated volume
// (written in pieces) and the plain copy (written in one stream) sit in
// page-cache folios of different sizes, and copying out of the small ones
// costs twice the kernel time — measured on the same 1 GiB: dd at 128 KiB
// 0.165 s per GiB before, 0.08 s after — a difference of the cache, not of
// the readers that `vmfs2vhd cat` / `cat` compares.
func recache(paths ...string) error {
	buf := make([]byte, 2<<20)
	for _, root := range paths {
		if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
			continue // no plain copy for this workload
		}
		err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			fd := int(f.Fd())
			if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
				return fmt.Errorf("recache %s: %w", p, err)
			}
			for off := int64(0); off < fi.Size(); {
				start, err := unix.Seek(fd, off, unix.SEEK_DATA)
				if err != nil {
					break // ENXIO: no data after off
				}
				end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
				if err != nil {
					return fmt.Errorf("recache %s: %w", p, err)
				}
				for o := start; o < end; {
					n, err := f.ReadAt(buf[:min(int64(len(buf)), end-o)], o)
					if n == 0 && err != nil {
						return fmt.Errorf("recache %s: %w", p, err)
					}
					o += int64(n)
				}
				off = end
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
