package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/qcow2"
	"github.com/vmfs2vhd/vmfs2vhd/formats/raw"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhd"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhdx"
)

// In-place update ("warm migration"): an output written earlier from a
// snapshot's base is brought up to date by writing only what a later chain
// point changed. Each format package plans the update from the output's
// own metadata (qcow2.PlanUpdate, vhd.PlanUpdate, vhdx.PlanUpdate,
// raw.PlanUpdate) — a pure function of the file's metadata bytes and the
// changed extents, so that running it again after an interruption plans
// the same writes — and Apply writes the plan: stage by stage, each stage
// followed by an fsync, data before the tables that point at it, headers
// last.

// UpdatePlan is the shape every format's planned update has (the format
// packages each declare an identical Update struct; see their PlanUpdate).
type UpdatePlan struct {
	// FileSize is the size the file is set to before the first write (it
	// grows, or drops bytes no metadata refers to); 0 leaves it alone.
	FileSize int64
	// Stages are written in order, each followed by a flush. Within a
	// stage, pieces are written in order: Meta bytes; virtual-disk bytes
	// [Src, Src+Len) of the new image; or, when Meta is nil and Src < 0,
	// zeros (always written — the file holds old bytes there).
	Stages [][]formats.Piece
	// PunchZeros allows zero pieces to be punched as holes instead of
	// written (raw images only).
	PunchZeros bool
}

// UpdateFile is an output opened for an in-place update: an *os.File, or
// anything with the same methods (tests use a file that stops after N
// writes).
type UpdateFile interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
}

// HolePuncher is implemented by files that can deallocate a range so that
// it reads as zeros, keeping the file size.
type HolePuncher interface {
	PunchHole(off, n int64) error
}

// ErrUpdateFormat reports a format name Apply does not know.
var ErrUpdateFormat = errors.New("unknown output format for an update")

// ApplyStats report what an update wrote.
type ApplyStats struct {
	DataBytes    int64 // virtual-disk bytes copied from the new image
	ZeroBytes    int64 // bytes zeroed (written or punched)
	MetaBytes    int64 // metadata bytes written (tables, log, headers)
	Punched      int64 // of ZeroBytes, bytes deallocated instead of written
	Stages       int   // stages written (each ended by an fsync)
	FileSizeFrom int64
	FileSizeTo   int64
}

// Applied returns the bytes the update wrote or zeroed.
func (s ApplyStats) Applied() int64 { return s.DataBytes + s.ZeroBytes + s.MetaBytes }

// PlanUpdate plans the update of the output f (fileSize bytes, in format
// "raw", "vhd", "vhdx" or "qcow2") to the content of img, of which only
// changes differ from what f holds. changes are sorted, non-overlapping
// extents within [0, img.Size()): Data ranges are copied from img, Zero and
// Hole ranges now read as zeros.
func PlanUpdate(f io.ReaderAt, fileSize int64, format string, img formats.Image, changes []formats.Extent) (*UpdatePlan, error) {
	size := img.Size()
	switch format {
	case "raw":
		u, err := raw.PlanUpdate(fileSize, size, changes)
		if err != nil {
			return nil, err
		}
		return &UpdatePlan{FileSize: u.FileSize, Stages: u.Stages, PunchZeros: u.PunchZeros}, nil
	case "vhd":
		u, err := vhd.PlanUpdate(f, fileSize, size, changes)
		if err != nil {
			return nil, err
		}
		return &UpdatePlan{FileSize: u.FileSize, Stages: u.Stages, PunchZeros: u.PunchZeros}, nil
	case "vhdx":
		u, err := vhdx.PlanUpdate(f, fileSize, size, changes)
		if err != nil {
			return nil, err
		}
		return &UpdatePlan{FileSize: u.FileSize, Stages: u.Stages, PunchZeros: u.PunchZeros}, nil
	case "qcow2":
		u, err := qcow2.PlanUpdate(f, fileSize, size, changes)
		if err != nil {
			return nil, err
		}
		return &UpdatePlan{FileSize: u.FileSize, Stages: u.Stages, PunchZeros: u.PunchZeros}, nil
	}
	return nil, fmt.Errorf("convert: %q: %w", format, ErrUpdateFormat)
}

// UpdateOptions tune Apply.
type UpdateOptions struct {
	// Progress, if set, receives the number of bytes written (data, zeros
	// and metadata) since the last call, from the calling goroutine.
	Progress func(n int64)
}

// Apply updates the output at path in place: it plans the update with the
// format's updater (PlanUpdate) and writes it with ApplyTo. The file is
// synced after every stage; on return without error the update is durable.
func Apply(ctx context.Context, path, format string, img formats.Image, changes []formats.Extent, opts ...UpdateOptions) (ApplyStats, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return ApplyStats{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return ApplyStats{}, err
	}
	st, err := ApplyTo(ctx, punchFile{f}, fi.Size(), format, img, changes, opts...)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return st, err
}

// ApplyTo plans and writes an update of f (fileSize bytes): see Apply.
func ApplyTo(ctx context.Context, f UpdateFile, fileSize int64, format string, img formats.Image, changes []formats.Extent, opts ...UpdateOptions) (ApplyStats, error) {
	p, err := PlanUpdate(f, fileSize, format, img, changes)
	if err != nil {
		return ApplyStats{}, err
	}
	return WriteUpdate(ctx, f, fileSize, p, img, opts...)
}

// updateBuf is the size of the buffer data pieces are copied through.
const updateBuf = 1 << 20

// WriteUpdate writes a planned update to f, reading data pieces from src.
// It is sequential: one buffer, one read then one write at a time (the
// changed ranges of a warm migration are small next to a full conversion;
// the parallel engine can take over when measurements say so).
func WriteUpdate(ctx context.Context, f UpdateFile, fileSize int64, p *UpdatePlan, src io.ReaderAt, opts ...UpdateOptions) (ApplyStats, error) {
	st := ApplyStats{FileSizeFrom: fileSize, FileSizeTo: fileSize}
	progress := func(int64) {}
	for _, o := range opts {
		if o.Progress != nil {
			progress = o.Progress
		}
	}
	if p.FileSize > 0 && p.FileSize != fileSize {
		if err := f.Truncate(p.FileSize); err != nil {
			return st, err
		}
		st.FileSizeTo = p.FileSize
	}
	var buf, zeros []byte
	puncher, _ := f.(HolePuncher)
	for _, stage := range p.Stages {
		for _, pc := range stage {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			switch {
			case pc.Meta != nil:
				if int64(len(pc.Meta)) != pc.Len {
					return st, fmt.Errorf("convert: update piece [%d, +%d) with %d metadata bytes: %w", pc.Off, pc.Len, len(pc.Meta), ErrLayout)
				}
				// One write per metadata piece: the planners size them
				// so that a piece is what must land together.
				if _, err := f.WriteAt(pc.Meta, pc.Off); err != nil {
					return st, err
				}
				st.MetaBytes += pc.Len
				progress(pc.Len)
			case pc.Src >= 0:
				if buf == nil {
					buf = make([]byte, updateBuf)
				}
				for done := int64(0); done < pc.Len; {
					n := min(int64(len(buf)), pc.Len-done)
					if _, err := formats.ReadFull(src, buf[:n], pc.Src+done); err != nil {
						return st, &ReadError{Off: pc.Src + done, Len: n, Err: err}
					}
					if err := writeAll(f, buf[:n], pc.Off+done); err != nil {
						return st, err
					}
					progress(n)
					done += n
				}
				st.DataBytes += pc.Len
			default:
				if p.PunchZeros && puncher != nil {
					if n, err := punch(f, puncher, pc.Off, pc.Len, &zeros); err == nil {
						st.ZeroBytes += pc.Len
						st.Punched += n
						progress(pc.Len)
						continue
					}
				}
				if err := writeZeros(f, pc.Off, pc.Len, &zeros); err != nil {
					return st, err
				}
				st.ZeroBytes += pc.Len
				progress(pc.Len)
			}
		}
		if err := f.Sync(); err != nil {
			return st, err
		}
		st.Stages++
	}
	return st, nil
}

// punchAlign is the granularity of hole punching: the file system block
// size on every file system we care about. Edges are written as zeros.
const punchAlign = 4096

// punch zeroes [off, off+n): the aligned middle deallocated, the edges
// written. It returns the bytes punched.
func punch(f io.WriterAt, h HolePuncher, off, n int64, zeros *[]byte) (int64, error) {
	lo := (off + punchAlign - 1) / punchAlign * punchAlign
	hi := (off + n) / punchAlign * punchAlign
	if hi <= lo {
		return 0, writeZeros(f, off, n, zeros)
	}
	if err := h.PunchHole(lo, hi-lo); err != nil {
		return 0, err
	}
	if err := writeZeros(f, off, lo-off, zeros); err != nil {
		return 0, err
	}
	return hi - lo, writeZeros(f, hi, off+n-hi, zeros)
}

func writeZeros(f io.WriterAt, off, n int64, zeros *[]byte) error {
	if n <= 0 {
		return nil
	}
	if *zeros == nil {
		*zeros = make([]byte, updateBuf)
	}
	for n > 0 {
		k := min(n, int64(len(*zeros)))
		if err := writeAll(f, (*zeros)[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// punchFile adds PunchHole to an *os.File.
type punchFile struct{ *os.File }

func (p punchFile) PunchHole(off, n int64) error { return punchHole(p.File, off, n) }
