package vmdk

import (
	"io/fs"
	"os"
	"path/filepath"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// File is one file of a disk, opened read-only: a descriptor or an extent.
// Extent reports the file's own allocation (Hole for unallocated blocks,
// Zero for VMFS to-be-zeroed blocks); ReadAt must be safe for concurrent
// use and read zeros in holes.
type File interface {
	formats.Image
	Close() error
}

// FS opens the files of a disk. Names are slash-separated paths relative
// to the root of the FS, as in io/fs (fs.ValidPath); the files of a
// datastore on a VMFS volume and those of a local directory are reached the
// same way.
type FS interface {
	Open(name string) (File, error)
}

// FSFunc adapts a function to FS, for example the files of a VMFS volume:
//
//	fsys := vmdk.FSFunc(func(name string) (vmdk.File, error) { return vol.Open(name) })
//
// (the function must return a nil interface, not a typed nil, on error).
type FSFunc func(name string) (File, error)

// Open calls f.
func (f FSFunc) Open(name string) (File, error) { return f(name) }

// DirFS returns an FS for the local directory dir. Files are opened
// read-only; on Linux their Extent answers come from SEEK_DATA/SEEK_HOLE,
// elsewhere a file is all Data.
func DirFS(dir string) FS { return dirFS(dir) }

type dirFS string

func (d dirFS) Open(name string) (File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	f, err := os.Open(filepath.Join(string(d), filepath.FromSlash(name)))
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	return &osFile{f: f, size: st.Size()}, nil
}

// osFile is a local file as a formats.Image.
type osFile struct {
	f    *os.File
	size int64
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error) { return o.f.ReadAt(p, off) }
func (o *osFile) Size() int64                             { return o.size }
func (o *osFile) Close() error                            { return o.f.Close() }

// Locate says that the file's bytes are in the file itself
// (formats.Locator); bytes past its end are not stored.
func (o *osFile) Locate(off, n int64) (formats.Location, error) {
	if off < 0 || n <= 0 || off >= o.size {
		return formats.Location{}, formats.ErrOutOfRange
	}
	return formats.Location{R: o.f, Off: off, Len: min(n, o.size-off)}, nil
}

func (o *osFile) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= o.size {
		return formats.Extent{}, formats.ErrOutOfRange
	}
	return seekExtent(o.f, off, o.size)
}
