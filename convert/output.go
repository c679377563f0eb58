package convert

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// ErrExists reports an output file that exists and may not be replaced.
var ErrExists = errors.New("output exists (use --force to overwrite)")

// Output is a file being written under a temporary name in its target
// directory; Commit syncs it and renames it into place, Abort removes it.
// A conversion that fails or is interrupted leaves nothing behind.
type Output struct {
	*os.File
	path  string
	force bool
	done  bool

	// Early writeback: every flushEvery bytes written the flusher goroutine
	// asks the kernel to start writing the file's dirty pages, so the disk
	// works while the conversion copies instead of all at Commit's fsync.
	dirty   atomic.Int64
	kick    chan struct{}
	flusher sync.WaitGroup
}

// flushEvery is how much is written between two early-writeback requests.
// Without them the kernel starts writing only when a tenth of memory is
// dirty, so a conversion of a few GiB copies everything first and then
// waits for the whole fsync; with them 1 GiB to ext4 took 0.5 s instead of
// 0.75 s (bench/README.md).
const flushEvery = 32 << 20

// WriteAt writes to the file and requests writeback of what is dirty every
// flushEvery bytes.
func (o *Output) WriteAt(p []byte, off int64) (int, error) {
	n, err := o.File.WriteAt(p, off)
	if o.dirty.Add(int64(n)) >= flushEvery {
		o.dirty.Store(0)
		select {
		case o.kick <- struct{}{}:
		default: // a request is pending already
		}
	}
	return n, err
}

// startFlusher runs the goroutine that turns kicks into writeback requests.
func (o *Output) startFlusher() {
	o.kick = make(chan struct{}, 1)
	rc, err := o.File.SyscallConn()
	if err != nil {
		return // WriteAt's kicks then fill the channel and are dropped
	}
	o.flusher.Add(1)
	go func() {
		defer o.flusher.Done()
		for range o.kick {
			rc.Control(startWriteback)
		}
	}()
}

// stopFlusher ends the flusher goroutine before the file is closed.
func (o *Output) stopFlusher() {
	if o.kick != nil {
		close(o.kick)
		o.flusher.Wait()
		o.kick = nil
	}
}

// CreateOutput starts writing path. Unless force is set an existing path is
// refused, now and again at Commit.
func CreateOutput(path string, force bool) (*Output, error) {
	if !force {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("%s: %w", path, ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".vmfs2vhd-*.tmp")
	if err != nil {
		return nil, err
	}
	o := &Output{File: f, path: path, force: force}
	o.startFlusher()
	return o, nil
}

// Path is the final name.
func (o *Output) Path() string { return o.path }

// Commit sets the file's size, syncs it and moves it to its final name.
func (o *Output) Commit(size int64) error {
	if o.done {
		return errors.New("convert: output already committed or aborted")
	}
	o.stopFlusher()
	if err := o.Truncate(size); err != nil {
		o.Abort()
		return err
	}
	if err := o.Sync(); err != nil {
		o.Abort()
		return err
	}
	if err := o.File.Close(); err != nil {
		o.Abort()
		return err
	}
	o.done = true
	tmp := o.Name()
	if o.force {
		if err := os.Rename(tmp, o.path); err != nil {
			os.Remove(tmp)
			return err
		}
	} else {
		// Link refuses an existing target, so a file that appeared while we
		// wrote is not overwritten.
		if err := os.Link(tmp, o.path); err != nil {
			os.Remove(tmp)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s: %w", o.path, ErrExists)
			}
			return err
		}
		os.Remove(tmp)
	}
	if d, err := os.Open(filepath.Dir(o.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Abort closes and removes the temporary file; it is safe to call after
// Commit (it does nothing then) and more than once.
func (o *Output) Abort() {
	if o.done {
		return
	}
	o.done = true
	o.stopFlusher()
	o.File.Close()
	os.Remove(o.Name())
}
