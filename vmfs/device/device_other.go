//go:build !linux && !windows && !darwin

package device

import (
	"errors"
	"io"
	"os"
)

// openOS opens an image file or a device node: the size is whatever seeking
// to the end says; devices are read aligned to 4 KiB (the sector size is not
// queried on this OS). Options.Direct changes nothing.
func openOS(path string, opts Options) (*Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	d := &Device{name: path, f: f}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Mode().IsRegular() {
		d.size = st.Size()
		return d, nil
	}
	d.raw = st.Mode()&os.ModeDevice != 0
	if d.size, err = f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// List is not supported on this OS: name the devices.
func List() ([]string, error) {
	return nil, errors.New("device: listing the attached devices is not supported on this OS: name them")
}
