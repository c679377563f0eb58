package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// reply is one complete answer to a request — a simple reply, or every
// chunk of a structured reply — handed to the connection's writer so that
// replies never interleave.
type reply struct {
	bufs    net.Buffers
	buf     *[]byte // read buffer to recycle once written
	charged int64   // bytes of the buffer budget to give back once written
}

// Limits of one reply.
const (
	// maxReadChunks bounds the content chunks of a structured read reply;
	// an image fragmented beyond that has the rest of the range sent as
	// data.
	maxReadChunks = 1024
	// maxDescriptors bounds the extents of a block status reply; the client
	// asks again for the rest.
	maxDescriptors = 1024
	// shutdownGrace is how long replies to requests already read may take
	// to go out once the server shuts down.
	shutdownGrace = 5 * time.Second
)

// transmit runs the transmission phase: this goroutine reads requests, up
// to MaxInFlight workers serve them, one writer sends the replies.
func (c *conn) transmit(ctx context.Context) error {
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.cancel = cancel
	c.replies = make(chan *reply, c.s.opts.MaxInFlight)

	writerDone := make(chan error, 1)
	c.s.goFunc(nil, func() { writerDone <- c.writeLoop() })

	// A server shutdown stops the reading of new requests; those already
	// read are answered, within shutdownGrace.
	stop := context.AfterFunc(ctx, func() {
		t := time.Now().Add(shutdownGrace)
		c.shutdownAt.Store(t.UnixNano())
		c.raw.SetWriteDeadline(t)
		c.raw.SetReadDeadline(time.Unix(1, 0))
	})
	defer stop()

	var workers sync.WaitGroup
	err := c.readLoop(ctx, wctx, &workers)
	if !clean(err) {
		// A broken or silent client: drop it now rather than answer it.
		cancel()
		c.raw.Close()
	}
	workers.Wait()
	close(c.replies)
	werr := <-writerDone
	if werr != nil && !errors.Is(werr, net.ErrClosed) && (clean(err) || errors.Is(err, net.ErrClosed)) {
		// The client went away while replies were going out (the reader
		// then saw the connection the writer closed).
		return fmt.Errorf("writing replies: %w", bareNetErr(werr))
	}
	if clean(err) && c.tls && werr == nil {
		if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
			// Shut TLS down cleanly (close_notify), as NBD_CMD_DISC asks.
			c.raw.SetWriteDeadline(time.Now().Add(time.Second))
			tc.CloseWrite()
		}
	}
	return err
}

// readLoop reads requests until the client disconnects, breaks the
// protocol, or the server shuts down.
func (c *conn) readLoop(ctx, wctx context.Context, workers *sync.WaitGroup) error {
	o := &c.s.opts
	br := bufio.NewReaderSize(c.nc, 64<<10)
	slots := make(chan struct{}, o.MaxInFlight)
	for {
		// Between requests the client may stay silent as long as it likes,
		// unless IdleTimeout says otherwise.
		var idle time.Time
		if o.IdleTimeout > 0 {
			idle = time.Now().Add(o.IdleTimeout)
		}
		if err := c.setReadDeadline(ctx, idle); err != nil {
			return err
		}
		if _, err := br.Peek(1); err != nil {
			return c.readFailed(ctx, err, "request")
		}
		// Once a request has started, all of it must arrive in time.
		if err := c.setReadDeadline(ctx, time.Now().Add(o.RequestTimeout)); err != nil {
			return err
		}
		var r request
		if _, err := io.ReadFull(br, r[:]); err != nil {
			return c.readFailed(ctx, err, "request header")
		}
		c.requests.Add(1)
		if r.magic() != magicRequest {
			return protoErr("request magic %#08x, want %#08x", r.magic(), magicRequest)
		}
		switch r.typ() {
		case cmdDisc:
			return errDisc
		case cmdWrite:
			// Read-only, but the payload must be read to stay in step.
			if int64(r.length()) > int64(o.MaxRequest) {
				return protoErr("NBD_CMD_WRITE of %d bytes, over the %d-byte limit", r.length(), o.MaxRequest)
			}
			if _, err := io.CopyN(io.Discard, br, int64(r.length())); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return c.readFailed(ctx, err, "write payload")
			}
			c.sendError(r.handle(), errPerm, "the export is read-only")
			continue
		}
		// Wait for a free worker slot; the rest of the client's requests
		// wait in the socket meanwhile.
		slots <- struct{}{}
		c.s.goFunc(workers, func() {
			defer func() { <-slots }()
			c.serve(wctx, &r)
		})
	}
}

// setReadDeadline sets the read deadline unless the server is shutting
// down (checked after setting, so that the shutdown's own deadline, set
// concurrently, is never overwritten unnoticed).
func (c *conn) setReadDeadline(ctx context.Context, t time.Time) error {
	if err := c.raw.SetReadDeadline(t); err != nil {
		return bareNetErr(err)
	}
	if ctx.Err() != nil {
		return errShutdown
	}
	return nil
}

func (c *conn) readFailed(ctx context.Context, err error, what string) error {
	if ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return errShutdown
	}
	return readErr(err, what)
}

// serve answers one request other than NBD_CMD_WRITE and NBD_CMD_DISC.
func (c *conn) serve(ctx context.Context, r *request) {
	flags, h := r.flags(), r.handle()
	off, n := r.offset(), r.length()
	// FUA is accepted (and meaningless) on every command.
	allowed := uint16(cmdFlagFUA)
	switch r.typ() {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	case cmdTrim, cmdWriteZeroes:
		c.sendError(h, errPerm, "the export is read-only")
		return
	case cmdFlush:
	case cmdCache:
	default:
		c.sendError(h, errInval, fmt.Sprintf("unknown command %d", r.typ()))
		return
	}
	if flags&^allowed != 0 {
		c.sendError(h, errInval, fmt.Sprintf("%s: unsupported flags %#x", cmdName(r.typ()), flags&^allowed))
		return
	}
	if r.typ() == cmdFlush {
		c.sendOK(h)
		return
	}
	if off > uint64(c.size) || uint64(n) > uint64(c.size)-off {
		c.sendError(h, errInval, fmt.Sprintf("%s of [%d, +%d) beyond the export's %d bytes", cmdName(r.typ()), off, n, c.size))
		return
	}
	if r.typ() != cmdBlockStatus && int64(n) > int64(c.s.opts.MaxRequest) {
		c.sendError(h, errInval, fmt.Sprintf("%s of %d bytes, over the %d-byte limit", cmdName(r.typ()), n, c.s.opts.MaxRequest))
		return
	}
	switch r.typ() {
	case cmdCache:
		c.sendOK(h)
	case cmdBlockStatus:
		c.blockStatusReply(h, int64(off), int64(n), flags&cmdFlagReqOne != 0)
	case cmdRead:
		c.read(ctx, h, int64(off), int64(n), flags&cmdFlagDF != 0)
	}
}

// run is a part of a read: data to read, or zeros (Zero or Hole).
type run struct {
	off, n int64
	data   bool
}

// plan splits [off, off+n) into runs from the image's extent map, merging
// Zero with Hole and never making more than maxReadChunks runs. An image
// whose extent query fails has the rest of the range read as data.
func (c *conn) plan(off, n int64) []run {
	img := c.exp.Image
	var runs []run
	end := off + n
	for pos := off; pos < end; {
		if len(runs) == maxReadChunks-1 {
			runs = append(runs, run{pos, end - pos, true})
			break
		}
		e, err := img.Extent(pos)
		if err == nil && (e.Len <= 0 || e.Off > pos || e.End() <= pos) {
			err = fmt.Errorf("extent query at %d returned [%d, +%d): %w", pos, e.Off, e.Len, formats.ErrBadExtent)
		}
		if err != nil {
			c.s.logf("nbd: export %q: %v; reading the range as data", c.exp.Name, err)
			runs = append(runs, run{pos, end - pos, true})
			break
		}
		l := min(e.End(), end) - pos
		data := e.Kind != formats.Zero && e.Kind != formats.Hole
		if k := len(runs); k > 0 && runs[k-1].data == data {
			runs[k-1].n += l
		} else {
			runs = append(runs, run{pos, l, data})
		}
		pos += l
	}
	return runs
}

// read answers NBD_CMD_READ of [off, off+n), already checked against the
// export's size and the request limit.
func (c *conn) read(ctx context.Context, h uint64, off, n int64, df bool) {
	if n == 0 {
		if c.structured {
			c.send(&reply{bufs: net.Buffers{chunk(replyFlagDone, chunkNone, h, nil)}})
		} else {
			c.sendOK(h)
		}
		return
	}
	runs := c.plan(off, n)
	var data int64
	for _, r := range runs {
		if r.data {
			data += r.n
		}
	}
	// Without structured replies, and with DF when some of the range is
	// data, the whole range goes out as one piece, zeros included.
	whole := !c.structured || (df && data > 0)
	need := data
	if whole {
		need = n
	}
	// Charge what the pooled buffer really holds.
	charged, err := c.s.budget.acquire(ctx, int64(poolSize(int(need))))
	if err != nil {
		return // the connection is going away
	}
	rep := &reply{charged: charged}
	var buf []byte
	if need > 0 {
		rep.buf = c.s.pool.get(int(need))
		buf = *rep.buf
	}
	// Fill buf: data runs from the image, zero runs (whole mode) cleared.
	pos := 0
	for _, r := range runs {
		if !r.data && !whole {
			continue
		}
		b := buf[pos : pos+int(r.n)]
		pos += int(r.n)
		if !r.data {
			clear(b)
			continue
		}
		if m, err := c.exp.Image.ReadAt(b, r.off); m < len(b) || (err != nil && err != io.EOF) {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			c.release(rep)
			c.s.logf("nbd: export %q: read [%d, +%d): %v", c.exp.Name, r.off, r.n, err)
			c.sendError(h, errIO, fmt.Sprintf("read error at offset %d", r.off))
			return
		}
	}
	c.dataRead.Add(n)

	if !c.structured {
		hdr := make([]byte, len(simpleReply{}))
		putSimpleReply(hdr, 0, h)
		rep.bufs = net.Buffers{hdr, buf}
		c.send(rep)
		return
	}
	if whole {
		rep.bufs = net.Buffers{offsetData(replyFlagDone, h, off, len(buf)), buf}
		c.send(rep)
		return
	}
	pos = 0
	for i, r := range runs {
		var fl uint16
		if i == len(runs)-1 {
			fl = replyFlagDone
		}
		if !r.data {
			p := make([]byte, offsetHoleLen)
			be.PutUint64(p, uint64(r.off))
			be.PutUint32(p[8:], uint32(r.n))
			rep.bufs = append(rep.bufs, chunk(fl, chunkOffsetHole, h, p))
			continue
		}
		rep.bufs = append(rep.bufs, offsetData(fl, h, r.off, int(r.n)), buf[pos:pos+int(r.n)])
		pos += int(r.n)
	}
	c.send(rep)
}

// offsetData returns the chunk header and offset of an OFFSET_DATA chunk
// of n bytes; the data follows.
func offsetData(flags uint16, h uint64, off int64, n int) []byte {
	b := make([]byte, len(chunkHeader{})+offsetDataFixed)
	putChunkHeader(b, flags, chunkOffsetData, h, offsetDataFixed+n)
	be.PutUint64(b[len(chunkHeader{}):], uint64(off))
	return b
}

// chunk returns a whole structured reply chunk with payload p.
func chunk(flags, typ uint16, h uint64, p []byte) []byte {
	b := make([]byte, len(chunkHeader{}), len(chunkHeader{})+len(p))
	putChunkHeader(b, flags, typ, h, len(p))
	return append(b, p...)
}

// blockStatusReply answers NBD_CMD_BLOCK_STATUS for base:allocation from
// the image's extent map; no data is read.
func (c *conn) blockStatusReply(h uint64, off, n int64, one bool) {
	if !c.blockStatus {
		c.sendError(h, errInval, "no metadata context selected (NBD_OPT_SET_META_CONTEXT base:allocation)")
		return
	}
	if n == 0 {
		c.sendError(h, errInval, "block status of 0 bytes")
		return
	}
	p := make([]byte, 4, 4+descriptorLen*16)
	be.PutUint32(p, metaIDAllocation)
	count := 0
	errStop := errors.New("enough")
	err := formats.Walk(c.exp.Image, off, n, func(e formats.Extent) error {
		var st uint32
		switch e.Kind {
		case formats.Zero:
			st = stateZero
		case formats.Hole:
			st = stateHole | stateZero
		}
		p = be.AppendUint32(p, uint32(e.Len))
		p = be.AppendUint32(p, st)
		if count++; one || count == maxDescriptors {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		if count == 0 {
			// Allowed by the protocol for errors that are not the
			// client's: say "data" for the whole range, so that a copy
			// reads it (and meets the error there if it persists).
			c.s.logf("nbd: export %q: extents of [%d, +%d): %v; reporting data", c.exp.Name, off, n, err)
			p = be.AppendUint32(p, uint32(n))
			p = be.AppendUint32(p, 0)
		}
	}
	c.send(&reply{bufs: net.Buffers{chunk(replyFlagDone, chunkBlockStatus, h, p)}})
}

// sendOK sends a successful reply without payload.
func (c *conn) sendOK(h uint64) {
	b := make([]byte, len(simpleReply{}))
	putSimpleReply(b, 0, h)
	c.send(&reply{bufs: net.Buffers{b}})
}

// sendError sends an error reply: a structured error chunk with msg when
// structured replies were negotiated, else a simple reply.
func (c *conn) sendError(h uint64, errno uint32, msg string) {
	if !c.structured {
		b := make([]byte, len(simpleReply{}))
		putSimpleReply(b, errno, h)
		c.send(&reply{bufs: net.Buffers{b}})
		return
	}
	msg = msg[:min(len(msg), maxString)]
	p := make([]byte, errorFixed, errorFixed+len(msg))
	be.PutUint32(p, errno)
	be.PutUint16(p[4:], uint16(len(msg)))
	c.send(&reply{bufs: net.Buffers{chunk(replyFlagDone, chunkError, h, append(p, msg...))}})
}

// setWriteDeadline gives the next write WriteTimeout, or what is left of
// the shutdown grace.
func (c *conn) setWriteDeadline() {
	for {
		sa := c.shutdownAt.Load()
		t := time.Now().Add(c.s.opts.WriteTimeout)
		if sa != 0 && sa < t.UnixNano() {
			t = time.Unix(0, sa)
		}
		c.raw.SetWriteDeadline(t)
		if c.shutdownAt.Load() == sa {
			return
		}
	}
}

func (c *conn) send(r *reply) { c.replies <- r }

func (c *conn) release(r *reply) {
	if r.buf != nil {
		c.s.pool.put(r.buf)
		r.buf = nil
	}
	c.s.budget.release(r.charged)
	r.charged = 0
}

// writeLoop writes replies in the order they come until the channel is
// closed. After a write error it keeps draining (releasing buffers), stops
// the workers and closes the connection so that the reader stops too.
func (c *conn) writeLoop() error {
	bw := bufio.NewWriterSize(c.nc, 64<<10)
	var werr error
	for r := range c.replies {
		if werr == nil {
			c.setWriteDeadline()
			for _, b := range r.bufs {
				if _, werr = bw.Write(b); werr != nil {
					break
				}
			}
			if werr == nil && len(c.replies) == 0 {
				werr = bw.Flush()
			}
			if werr != nil {
				c.cancel()
				c.raw.Close()
			}
		}
		c.release(r)
	}
	if werr == nil {
		c.setWriteDeadline()
		werr = bw.Flush()
	}
	return werr
}
