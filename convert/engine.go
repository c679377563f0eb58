// Package convert is vmfs2vhd's copy engine: it turns a planned output
// layout (formats.Layout) and a source virtual disk (formats.Image) into
// bytes, reading each data range of the source once, in large chunks, with
// several readers in flight, skipping chunks that turn out to be all zero,
// and writing either out of order into a seekable file or in order to a
// stream. Holes and zero runs are never read: the planner left them out of
// the layout's data pieces.
package convert

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Options tune the engine.
type Options struct {
	// Jobs is the number of reads in flight; 0 means a default for the
	// machine (4, at least 2, at most 2×GOMAXPROCS).
	Jobs int
	// ChunkSize is the largest read, a power of two ≥ 64 KiB; 0 means 2 MiB
	// (qemu-img's I/O size too; 4 MiB was no faster and took more memory).
	// Data pieces are cut at multiples of it so reads stay aligned.
	ChunkSize int
	// Rescue keeps going past read errors: a failed read is retried in
	// halves down to single 512-byte sectors, what cannot be read is left as
	// zeros and reported to BadRange. Without it the first read error stops
	// the conversion.
	Rescue bool
	// BadRange, in rescue mode, receives every unreadable source range
	// (virtual-disk offset and length, sector-aligned) with the error. It is
	// called from several goroutines.
	BadRange func(off, n int64, err error)
	// Progress, if set, receives the number of source data bytes done since
	// the last call. It is called from several goroutines; it must be cheap
	// and safe for concurrent use (an atomic add, progressbar's Add64).
	Progress func(n int64)
}

func (o Options) jobs() int {
	if o.Jobs > 0 {
		return o.Jobs
	}
	return min(max(2, runtime.GOMAXPROCS(0)*2), 4)
}

func (o Options) chunk() int64 {
	if o.ChunkSize >= 64<<10 && o.ChunkSize&(o.ChunkSize-1) == 0 {
		return int64(o.ChunkSize)
	}
	return 2 << 20
}

// Stats count what a conversion did.
type Stats struct {
	DataRead     int64 // source bytes read
	ZeroSkipped  int64 // bytes read that were all zero and not written (seekable output)
	BytesWritten int64 // output bytes written (metadata and data; zeros in a stream too)
	FileSize     int64 // size of the output
}

// ErrLayout reports a layout whose pieces overlap or run past its file.
var ErrLayout = formats.ErrLayout

// chunk is one read of the source and where its bytes go.
type chunk struct {
	seq  int64
	off  int64 // output offset
	src  int64 // source offset; < 0: zeros
	n    int64
	meta []byte
	buf  *[]byte
	err  error
	done chan struct{} // ordered mode: closed when the read has finished
}

// chunks yields the layout cut into reads of at most size bytes, aligned to
// size in the source.
func chunks(l formats.Layout, size int64, yield func(chunk) bool) error {
	var prevEnd int64
	var seq int64
	for p := range l.Pieces() {
		if p.Len < 0 || p.Off < prevEnd || p.Off > l.FileSize()-p.Len || (p.Meta != nil && int64(len(p.Meta)) != p.Len) {
			return fmt.Errorf("convert: piece [%d, +%d) after %d in a %d-byte file: %w", p.Off, p.Len, prevEnd, l.FileSize(), ErrLayout)
		}
		prevEnd = p.Off + p.Len
		if p.Meta != nil || p.Src < 0 {
			if !yield(chunk{seq: seq, off: p.Off, src: -1, n: p.Len, meta: p.Meta}) {
				return nil
			}
			seq++
			continue
		}
		for done := int64(0); done < p.Len; {
			n := min(p.Len-done, size-(p.Src+done)%size)
			if !yield(chunk{seq: seq, off: p.Off + done, src: p.Src + done, n: n}) {
				return nil
			}
			seq++
			done += n
		}
	}
	return nil
}

// pool hands out chunk buffers. It keeps every buffer it gets back (at most
// as many as can be in flight: jobs+3), so a conversion allocates its
// buffers once — a sync.Pool would drop them at every GC and reallocate
// a chunk at a time, which is what made the heap grow.
type pool struct {
	size int64
	free chan *[]byte
}

func newPool(size int64, keep int) *pool {
	return &pool{size: size, free: make(chan *[]byte, keep)}
}

func (p *pool) get() *[]byte {
	select {
	case b := <-p.free:
		return b
	default:
		b := make([]byte, p.size)
		return &b
	}
}

func (p *pool) put(b *[]byte) {
	select {
	case p.free <- b:
	default:
	}
}

// readChunk fills c.buf from src.
func readChunk(src io.ReaderAt, c *chunk) error {
	b := (*c.buf)[:c.n]
	n, err := src.ReadAt(b, c.src)
	if int64(n) == c.n {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &ReadError{Off: c.src + int64(n), Len: c.n - int64(n), Err: err}
}

// rescueRead reads p at off, splitting a failed read in halves (on sector
// boundaries) down to single sectors; sectors that still fail are zeroed
// and reported.
func rescueRead(src io.ReaderAt, p []byte, off int64, bad func(off, n int64, err error)) {
	n, err := src.ReadAt(p, off)
	if n == len(p) {
		return
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if len(p) <= sectorSize {
		clear(p)
		if bad != nil {
			bad(off, int64(len(p)), err)
		}
		return
	}
	// Split at a sector boundary near the middle.
	half := (len(p) / 2) &^ (sectorSize - 1)
	if a := int((off + int64(half)) % sectorSize); a != 0 {
		half -= a
	}
	if half <= 0 {
		half = min(len(p), sectorSize-int(off%sectorSize))
	}
	rescueRead(src, p[:half], off, bad)
	rescueRead(src, p[half:], off+int64(half), bad)
}

const sectorSize = 512

// ReadError is a failed read of the source at a virtual-disk offset.
type ReadError struct {
	Off, Len int64
	Err      error
}

func (e *ReadError) Error() string {
	return fmt.Sprintf("reading source at offset %d (%d bytes): %v", e.Off, e.Len, e.Err)
}
func (e *ReadError) Unwrap() error { return e.Err }

// run is the shared engine: it cuts the layout into chunks, has jobs
// goroutines read the data chunks into pooled buffers, and hands every chunk
// to emit from one goroutine — in layout order when ordered is set, else as
// the reads complete. One writer keeps the output's inode lock uncontended
// (concurrent writers to one file spin on it) while the reads overlap the
// writes. It returns the first error: a read, an emit, a bad layout, or the
// cancellation of parent.
func run(parent context.Context, l formats.Layout, src io.ReaderAt, opts Options, ordered bool, emit func(c *chunk) error) (int64, error) {
	size := opts.chunk()
	jobs := opts.jobs()
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	// Buffers in flight: jobs reading, one waiting in queue (ordered mode:
	// the queue holds the reads), one being written, one being handed out.
	bufs := newPool(size, jobs+3)
	var read atomic.Int64

	work := make(chan *chunk)
	// queue feeds the emitter. In ordered mode chunks enter it in sequence
	// before their read, and the emitter waits for each read to finish; else
	// they enter when their read has finished. Its capacity bounds the
	// buffers in flight.
	queue := make(chan *chunk, 1)
	if ordered {
		queue = make(chan *chunk, jobs)
	}
	var wg sync.WaitGroup
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if ctx.Err() == nil {
					if opts.Rescue {
						rescueRead(src, (*c.buf)[:c.n], c.src, opts.BadRange)
					} else {
						c.err = readChunk(src, c)
					}
					if c.err == nil {
						read.Add(c.n)
					}
				} else {
					c.err = context.Cause(ctx)
				}
				if ordered {
					close(c.done)
					continue
				}
				queue <- c // the emitter drains queue until it is closed
			}
		}()
	}
	emitted := make(chan struct{})
	go func() {
		defer close(emitted)
		for c := range queue {
			if ordered {
				<-c.done
			}
			err := c.err
			if err == nil && ctx.Err() == nil {
				err = emit(c)
			}
			if c.buf != nil {
				bufs.put(c.buf)
			}
			if err != nil {
				cancel(err)
			}
		}
	}()
	enqueue := func(c *chunk) bool {
		select {
		case queue <- c:
			return true
		case <-ctx.Done():
			return false
		}
	}

	layoutErr := chunks(l, size, func(c chunk) bool {
		if ctx.Err() != nil {
			return false
		}
		cp := &c
		if c.src < 0 {
			// Metadata and zeros need no read.
			if ordered {
				cp.done = make(chan struct{})
				close(cp.done)
			}
			return enqueue(cp)
		}
		cp.buf = bufs.get()
		if ordered {
			cp.done = make(chan struct{})
			if !enqueue(cp) {
				bufs.put(cp.buf)
				return false
			}
		}
		select {
		case work <- cp:
		case <-ctx.Done():
			if ordered {
				cp.err = context.Cause(ctx)
				close(cp.done)
			} else {
				bufs.put(cp.buf)
			}
			return false
		}
		return true
	})
	close(work)
	wg.Wait()
	close(queue)
	<-emitted
	if layoutErr != nil {
		return read.Load(), layoutErr
	}
	if err := context.Cause(ctx); err != nil {
		return read.Load(), err
	}
	return read.Load(), nil
}

// Write writes the layout to dst, a seekable output that reads as zeros
// where nothing is written (a new, empty file). Data chunks are read by
// several goroutines and written with WriteAt as they complete; chunks that
// are all zero are not written, so the output stays sparse. The caller sets
// the file's size to l.FileSize().
func Write(ctx context.Context, dst io.WriterAt, l formats.Layout, src io.ReaderAt, opts Options) (Stats, error) {
	var skipped, written atomic.Int64
	n, err := run(ctx, l, src, opts, false, func(c *chunk) error {
		switch {
		case c.meta != nil:
			if err := writeAll(dst, c.meta, c.off); err != nil {
				return err
			}
			written.Add(c.n)
		case c.src < 0:
			// Zeros: the output already reads as zero.
		default:
			w, z, err := writeNonZero(dst, (*c.buf)[:c.n], c.off)
			written.Add(w)
			skipped.Add(z)
			if err != nil {
				return err
			}
			if opts.Progress != nil {
				opts.Progress(c.n)
			}
		}
		return nil
	})
	return Stats{DataRead: n, ZeroSkipped: skipped.Load(), BytesWritten: written.Load(), FileSize: l.FileSize()}, err
}

// zeroGranule is the unit of zero detection: runs of zeros this large and
// aligned are not written to a seekable output.
const zeroGranule = 64 << 10

// maxWrite is the largest single write. Chunks are read whole but written
// in pieces of at most this: on Linux 6.18 (ext4, large folios) one 2 MiB
// buffered write costs about ten times the CPU of eight 256 KiB ones — the
// copy into the page cache dominates — and 1 GiB written 1–2 MiB at a time
// took 1.9–2.5 s where 64–512 KiB writes took 0.75 s (bench/README.md).
const maxWrite = 256 << 10

// writeAll writes b at off in WriteAt calls of at most maxWrite bytes.
func writeAll(dst io.WriterAt, b []byte, off int64) error {
	for len(b) > 0 {
		n := min(len(b), maxWrite)
		if _, err := dst.WriteAt(b[:n], off); err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// writeNonZero writes b at off, leaving out aligned 64 KiB windows that are
// all zero; adjacent non-zero windows go out in one WriteAt. It returns the
// bytes written and skipped.
func writeNonZero(dst io.WriterAt, b []byte, off int64) (written, skipped int64, err error) {
	start := -1 // start of the pending non-zero run
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		err := writeAll(dst, b[start:end], off+int64(start))
		written += int64(end - start)
		start = -1
		return err
	}
	for i := 0; i < len(b); {
		// Windows end on multiples of zeroGranule in the output.
		end := min(len(b), i+zeroGranule-int((off+int64(i))%zeroGranule))
		if formats.IsZero(b[i:end]) {
			if err := flush(i); err != nil {
				return written, skipped, err
			}
			skipped += int64(end - i)
		} else if start < 0 {
			start = i
		}
		i = end
	}
	return written, skipped, flush(len(b))
}

// Stream writes the layout to w as one sequential stream of exactly
// FileSize bytes (zeros included), with reads running ahead of the writer.
func Stream(ctx context.Context, w io.Writer, l formats.Layout, src io.ReaderAt, opts Options) (Stats, error) {
	var pos, written int64
	zeros := make([]byte, 64<<10)
	writeZeros := func(n int64) error {
		for n > 0 {
			k := min(n, int64(len(zeros)))
			m, err := w.Write(zeros[:k])
			written += int64(m)
			if err != nil {
				return err
			}
			n -= k
		}
		return nil
	}
	n, err := run(ctx, l, src, opts, true, func(c *chunk) error {
		if err := writeZeros(c.off - pos); err != nil {
			return err
		}
		pos = c.off + c.n
		switch {
		case c.meta != nil:
			m, err := w.Write(c.meta)
			written += int64(m)
			return err
		case c.src < 0:
			return writeZeros(c.n)
		default:
			for b := (*c.buf)[:c.n]; len(b) > 0; {
				m, err := w.Write(b[:min(len(b), maxWrite)])
				written += int64(m)
				if err == nil && m == 0 {
					err = io.ErrShortWrite // a broken Writer must not spin us
				}
				if err != nil {
					return err
				}
				b = b[m:]
			}
			if opts.Progress != nil {
				opts.Progress(c.n)
			}
			return nil
		}
	})
	if err == nil {
		err = writeZeros(l.FileSize() - pos)
	}
	return Stats{DataRead: n, BytesWritten: written, FileSize: l.FileSize()}, err
}
