package convert

import (
	"bytes"
	"context"
	"fmt"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// MismatchError reports the first offset where the output differs from the
// source.
type MismatchError struct {
	Off    int64
	Reason string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("verification failed: output differs from the source at offset %d (%s)", e.Off, e.Reason)
}

// Verify compares out (the written image, read back through its format's
// reader) with src. Data ranges of the source are read on both sides; ranges
// that are zero or holes in the source are checked through out's allocation
// map and read only where out stores data there. So it costs one more read
// of the data, not of the virtual size. out may be larger than src (a size
// rounded up for a platform); the excess must read as zero.
func Verify(ctx context.Context, src, out formats.Image, opts Options) error {
	if out.Size() < src.Size() {
		return &MismatchError{Off: out.Size(), Reason: fmt.Sprintf("output size %d is smaller than the source's %d", out.Size(), src.Size())}
	}
	size := opts.chunk()
	a := make([]byte, size)
	b := make([]byte, size)
	checkZero := func(off, n int64) error {
		return formats.Walk(out, off, n, func(e formats.Extent) error {
			if e.Kind != formats.Data {
				return nil
			}
			for done := int64(0); done < e.Len; {
				k := min(size, e.Len-done)
				if err := ctx.Err(); err != nil {
					return err
				}
				if _, err := formats.ReadFull(out, b[:k], e.Off+done); err != nil {
					return fmt.Errorf("reading the output at %d: %w", e.Off+done, err)
				}
				if !formats.IsZero(b[:k]) {
					i := bytes.IndexFunc(b[:k], func(r rune) bool { return r != 0 })
					return &MismatchError{Off: e.Off + done + int64(max(i, 0)), Reason: "the source reads zero there"}
				}
				done += k
			}
			return nil
		})
	}
	err := formats.Walk(src, 0, src.Size(), func(e formats.Extent) error {
		if e.Kind != formats.Data {
			return checkZero(e.Off, e.Len)
		}
		for done := int64(0); done < e.Len; {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := min(size, e.Len-done)
			off := e.Off + done
			if _, err := formats.ReadFull(src, a[:k], off); err != nil {
				return &ReadError{Off: off, Len: k, Err: err}
			}
			if _, err := formats.ReadFull(out, b[:k], off); err != nil {
				return fmt.Errorf("reading the output at %d: %w", off, err)
			}
			if !bytes.Equal(a[:k], b[:k]) {
				i := 0
				for a[i] == b[i] {
					i++
				}
				return &MismatchError{Off: off + int64(i), Reason: "data differs"}
			}
			if opts.Progress != nil {
				opts.Progress(k)
			}
			done += k
		}
		return nil
	})
	if err != nil {
		return err
	}
	if out.Size() > src.Size() {
		return checkZero(src.Size(), out.Size()-src.Size())
	}
	return nil
}
