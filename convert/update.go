package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

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
// followed by an fsync, data before the tables that point at it (or with
// them, when nothing reachable points at either yet), headers last.

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
	DirectBytes  int64 // of DataBytes, bytes written past the page cache (O_DIRECT)
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
	// Planned, if set, is called by Apply and ApplyTo with the plan
	// before its first write (a progress bar takes its total from it).
	Planned func(p *UpdatePlan)
	// Direct says when Apply writes data chunks past the page cache, on
	// a file system that does direct I/O (see osUpdateFile).
	Direct DirectMode
}

// DirectMode says when an update's data chunks are written past the page
// cache (O_DIRECT).
type DirectMode int

const (
	// DirectAuto writes through the page cache while copying into it is
	// fast, and directly from the moment it is slower than the device
	// would be (measured on the update's own writes; see osUpdateFile).
	DirectAuto DirectMode = iota
	// DirectAlways writes every data chunk it can directly.
	DirectAlways
	// DirectNever writes everything through the page cache.
	DirectNever
)

// Total returns the bytes the plan writes or zeroes: what Progress
// reports in all.
func (p *UpdatePlan) Total() int64 {
	var n int64
	for _, st := range p.Stages {
		for _, pc := range st {
			n += pc.Len
		}
	}
	return n
}

// Apply updates the output at path in place: it plans the update with the
// format's updater (PlanUpdate) and writes it with WriteUpdate. The file
// is synced after every stage; on return without error the update is
// durable. An error with zero ApplyStats means the file was not changed
// (it could not be opened or planned, or ctx was done before the first
// write).
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
	uf := &osUpdateFile{File: f}
	if d, align := openDirect(path); d != nil {
		if dfi, err := d.Stat(); err == nil && os.SameFile(fi, dfi) {
			uf.direct, uf.align = d, align
		} else {
			d.Close()
		}
	}
	st, err := ApplyTo(ctx, uf, fi.Size(), format, img, changes, opts...)
	if uf.direct != nil {
		uf.direct.Close()
	}
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
	for _, o := range opts {
		if o.Planned != nil {
			o.Planned(p)
		}
	}
	return WriteUpdate(ctx, f, fileSize, p, img, opts...)
}

// updateBuf is the size of the reads data pieces are copied in (and of the
// progress reports: one per chunk).
const updateBuf = 1 << 20

// updateReaders is how many chunk reads are in flight while the writer
// writes; updateAhead bounds the chunks read but not yet written (and so
// the buffers: updateAhead MiB).
const (
	updateReaders = 2
	updateAhead   = 4
)

// WriteUpdate writes a planned update to f, reading data pieces from src.
// Writes happen in plan order, from the calling goroutine (which also
// calls Progress); the data of the next chunks is read ahead by
// updateReaders goroutines, at most updateAhead chunks, so reading the
// new image overlaps writing the output. When f is a file Apply opened
// for direct I/O, data chunks may go past the page cache, as the options'
// DirectMode says (see osUpdateFile); of what goes through it, the kernel
// is asked every updateFlushEvery bytes to start writing back (a hint, as
// for a conversion's output), so that the stage's fsync waits for the
// last few MiB only instead of all of them.
func WriteUpdate(ctx context.Context, f UpdateFile, fileSize int64, p *UpdatePlan, src io.ReaderAt, opts ...UpdateOptions) (ApplyStats, error) {
	if err := ctx.Err(); err != nil {
		return ApplyStats{}, err // nothing written
	}
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
	w := &updateWriter{f: f, src: src, progress: progress, punch: p.PunchZeros, st: &st}
	w.puncher, _ = f.(HolePuncher)
	w.direct, _ = f.(directWriter)
	for _, o := range opts {
		w.mode = o.Direct
	}
	if w.mode == DirectNever {
		w.direct = nil
	}
	w.wb = startUpdateWriteback(f)
	defer w.wb.stop()
	for _, stage := range p.Stages {
		if err := w.stage(ctx, stage); err != nil {
			return st, err
		}
		if err := f.Sync(); err != nil {
			return st, err
		}
		st.Stages++
	}
	return st, nil
}

// updateWriter writes the stages of one update.
type updateWriter struct {
	f        UpdateFile
	src      io.ReaderAt
	progress func(int64)
	punch    bool
	puncher  HolePuncher
	direct   directWriter // nil: every write goes through the page cache
	mode     DirectMode
	cached   cacheRate // how fast data chunks went into the page cache
	wb       *writeback
	zeros    []byte
	st       *ApplyStats
}

// updChunk is one piece of a stage, data pieces cut in reads of at most
// updateBuf bytes.
type updChunk struct {
	formats.Piece
	buf  []byte
	err  error
	done chan struct{} // data chunks: closed when the read has finished
}

// stage writes the pieces of one stage in order.
func (w *updateWriter) stage(ctx context.Context, stage []formats.Piece) error {
	var chunks []*updChunk
	var reads int
	for _, pc := range stage {
		if !pc.IsData() {
			chunks = append(chunks, &updChunk{Piece: pc})
			continue
		}
		for done := int64(0); done < pc.Len; {
			n := min(updateBuf, pc.Len-done)
			chunks = append(chunks, &updChunk{Piece: formats.Piece{Off: pc.Off + done, Len: n, Src: pc.Src + done}, done: make(chan struct{})})
			reads++
			done += n
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// free holds the buffers of chunks written; a token of ahead is held
	// from a chunk's read until its write.
	ahead := make(chan struct{}, updateAhead)
	free := make(chan []byte, updateAhead)
	if reads > 0 {
		work := make(chan *updChunk)
		for range min(updateReaders, reads) {
			wg.Go(func() {
				for c := range work {
					if err := ctx.Err(); err != nil {
						c.err = err
					} else if _, err := formats.ReadFull(w.src, c.buf, c.Src); err != nil {
						c.err = &ReadError{Off: c.Src, Len: c.Len, Err: err}
					}
					close(c.done)
				}
			})
		}
		wg.Go(func() {
			defer close(work)
			for _, c := range chunks {
				if c.done == nil {
					continue
				}
				select {
				case ahead <- struct{}{}:
				case <-ctx.Done():
					// The writer stops at the first chunk not read.
					c.err = ctx.Err()
					close(c.done)
					return
				}
				select {
				case c.buf = <-free:
				default:
					c.buf = make([]byte, updateBuf)
				}
				c.buf = c.buf[:c.Len]
				select {
				case work <- c:
				case <-ctx.Done():
					c.err = ctx.Err()
					close(c.done)
					return
				}
			}
		})
	}
	err := w.write(ctx, chunks, ahead, free)
	cancel()
	wg.Wait()
	return err
}

// write writes the chunks of a stage in order, as their reads complete.
func (w *updateWriter) write(ctx context.Context, chunks []*updChunk, ahead chan struct{}, free chan []byte) error {
	for _, c := range chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case c.Meta != nil:
			if int64(len(c.Meta)) != c.Len {
				return fmt.Errorf("convert: update piece [%d, +%d) with %d metadata bytes: %w", c.Off, c.Len, len(c.Meta), ErrLayout)
			}
			// One write per metadata piece: the planners size them
			// so that a piece is what must land together.
			if _, err := w.f.WriteAt(c.Meta, c.Off); err != nil {
				return err
			}
			w.wrote(c.Len)
			w.st.MetaBytes += c.Len
		case c.done != nil:
			<-c.done
			if c.err != nil {
				return c.err
			}
			direct := false
			if w.direct != nil && (w.mode == DirectAlways || w.cached.slow()) {
				var err error
				if direct, err = w.direct.writeDirect(c.buf, c.Off); err != nil {
					return err
				}
			}
			if !direct {
				t := time.Now()
				if err := writeAll(w.f, c.buf, c.Off); err != nil {
					return err
				}
				w.cached.add(c.Len, time.Since(t))
			}
			free <- c.buf[:cap(c.buf)]
			c.buf = nil
			<-ahead
			if direct {
				w.progress(c.Len) // nothing dirty in the page cache
				w.st.DirectBytes += c.Len
			} else {
				w.wrote(c.Len)
			}
			w.st.DataBytes += c.Len
		default:
			if w.punch && w.puncher != nil {
				if n, err := punch(w.f, w.puncher, c.Off, c.Len, &w.zeros); err == nil {
					w.st.ZeroBytes += c.Len
					w.st.Punched += n
					w.progress(c.Len)
					continue
				}
			}
			if err := writeZeros(w.f, c.Off, c.Len, &w.zeros); err != nil {
				return err
			}
			w.wrote(c.Len)
			w.st.ZeroBytes += c.Len
		}
	}
	return nil
}

// cacheRate measures the data chunks written through the page cache.
type cacheRate struct {
	bytes int64
	took  time.Duration
}

// Direct writes take over when, over at least directProbe bytes, copying
// data into the page cache took more than directSlow per MiB: slower than
// the devices we measured take direct writes (0.5–0.85 ms per MiB on the
// bench VM; 0.2–0.25 ms per MiB through its page cache at best, 1.5–2 ms
// at worst).
const (
	directProbe = 8 << 20
	directSlow  = time.Millisecond
)

func (r *cacheRate) add(n int64, d time.Duration) {
	if n >= directMin {
		r.bytes += n
		r.took += d
	}
}

func (r *cacheRate) slow() bool {
	return r.bytes >= directProbe && r.took > time.Duration(r.bytes>>20)*directSlow
}

// wrote counts n bytes written: progress, and early writeback.
func (w *updateWriter) wrote(n int64) {
	w.wb.add(n)
	w.progress(n)
}

// updateFlushEvery is how much an update writes through the page cache
// between two early-writeback requests: less than a conversion's
// flushEvery, since an update is short and its fsync waits for what the
// last request left (150 MiB with fsync: 117 ms every 8 MiB, 121 ms every
// 32 MiB, 142 ms without, on the bench VM).
const updateFlushEvery = 8 << 20

// writeback asks the kernel to start writing an update's dirty pages every
// updateFlushEvery bytes, from a goroutine of its own (sync_file_range may
// wait for the device's queue). A nil *writeback does nothing.
type writeback struct {
	dirty int64
	kick  chan struct{}
	done  sync.WaitGroup
}

// startUpdateWriteback starts the writeback goroutine of f, when f is a
// file (an *os.File, or a type that embeds one).
func startUpdateWriteback(f UpdateFile) *writeback {
	sc, ok := f.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	wb := &writeback{kick: make(chan struct{}, 1)}
	wb.done.Go(func() {
		for range wb.kick {
			rc.Control(startWriteback)
		}
	})
	return wb
}

func (wb *writeback) add(n int64) {
	if wb == nil {
		return
	}
	if wb.dirty += n; wb.dirty >= updateFlushEvery {
		wb.dirty = 0
		select {
		case wb.kick <- struct{}{}:
		default: // a request is pending already
		}
	}
}

// stop ends the goroutine; the file may be closed after.
func (wb *writeback) stop() {
	if wb != nil {
		close(wb.kick)
		wb.done.Wait()
	}
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

// osUpdateFile is the output Apply opens: an *os.File that can punch
// holes and, where the file system does direct I/O, a second descriptor
// opened with O_DIRECT (openDirect) that large aligned data chunks can be
// written through.
//
// Why both: an update's data is small next to a conversion's, so the time
// it takes is mostly the copy into the page cache and the stage's fsync,
// which waits for the device. On the 2-core bench VM, 150 MiB took
// 25–35 ms to copy into a page cache in good health, then 85–115 ms of
// fsync (writeback requested every updateFlushEvery bytes overlaps the
// copy); written directly it took 60–130 ms (the device's own pace, one
// write at a time — more in flight did not help) plus 85–120 ms of fsync.
// But for stretches of the same day the copy alone took 220–300 ms (the
// kernel's copy_folio_from_iter_atomic and page clearing then led the
// profile: fresh page-cache memory had become expensive on that VM) while
// direct writes kept their pace. So with DirectAuto data goes through the
// page cache until that proves slower than the device would be
// (cacheRate), and directly after.
// Small chunks (under directMin) always go through the page cache, where
// writeback sorts scattered writes for a disk that seeks. The fsync after
// each stage makes either durable: direct writes land in the device's
// cache, as written-back pages do.
type osUpdateFile struct {
	*os.File
	direct *os.File
	align  int64
}

// directMin is the smallest data chunk written directly.
const directMin = 64 << 10

func (f *osUpdateFile) PunchHole(off, n int64) error { return punchHole(f.File, off, n) }

// writeDirect writes b at off past the page cache, and says whether it
// did: not when f has no direct descriptor, b is shorter than directMin,
// or off and len(b) are not aligned for it (the caller then writes b as
// usual). A direct write the kernel refuses as invalid (EINVAL: a buffer
// it finds misaligned, a file system that takes O_DIRECT at open only)
// turns direct I/O off for the rest of the update; the bytes are then
// written the usual way.
func (f *osUpdateFile) writeDirect(b []byte, off int64) (bool, error) {
	if f.direct == nil || len(b) < directMin || off%f.align != 0 || int64(len(b))%f.align != 0 {
		return false, nil
	}
	if _, err := f.direct.WriteAt(b, off); err != nil {
		if errors.Is(err, syscall.EINVAL) {
			f.direct.Close()
			f.direct = nil
			return false, nil
		}
		return true, err
	}
	return true, nil
}

// directWriter is implemented by *osUpdateFile.
type directWriter interface {
	writeDirect(b []byte, off int64) (bool, error)
}
