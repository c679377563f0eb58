package convert

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	return &Output{File: f, path: path, force: force}, nil
}

// Path is the final name.
func (o *Output) Path() string { return o.path }

// Commit sets the file's size, syncs it and moves it to its final name.
func (o *Output) Commit(size int64) error {
	if o.done {
		return errors.New("convert: output already committed or aborted")
	}
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
	o.File.Close()
	os.Remove(o.Name())
}
