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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// reply is one complete answer to a request — a simple reply, or every
// chunk of a structured reply — handed to the connection's writer so that
// replies never interleave.
type reply struct {
	parts   []part
	buf     *[]byte // read buffer to recycle once written
	charged int64   // bytes of the buffer budget to give back once written
}

// part is a piece of a reply: bytes, or (src set) n bytes at off of an
// operating system file — a located run of the image, sent with
// sendfile(2) without passing through the server's memory.
type part struct {
	b   []byte
	src syscall.RawConn
	off int64
	n   int64
}

// bytesReply is a reply of the byte slices bs.
func bytesReply(bs ...[]byte) *reply {
	r := &reply{parts: make([]part, len(bs))}
	for i, b := range bs {
		r.parts[i].b = b
	}
	return r
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
	// maxPieces bounds the located pieces of one read; an image scattered
	// beyond that has the rest of the range read into a buffer.
	maxPieces = 4096
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
	if _, ok := c.exp.Image.(formats.Locator); ok && canSendFile && !c.tls {
		if sc, ok := c.raw.Conn.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				c.sendTo = rc
			}
		}
	}

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
		if r.typ() == cmdRead && c.sendTo != nil {
			// A read whose data is located (or zero) needs no buffer and
			// no device read here: it is answered at once, without a
			// worker; the others are read by one.
			if !c.check(&r) {
				continue
			}
			j := c.prepareRead(r.handle(), int64(r.offset()), int64(r.length()), r.flags()&cmdFlagDF != 0)
			if j.need == 0 {
				c.finishRead(wctx, j)
				continue
			}
			slots <- struct{}{}
			c.s.goFunc(workers, func() {
				defer func() { <-slots }()
				c.finishRead(wctx, j)
			})
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
	if !c.check(r) {
		return
	}
	off, n := r.offset(), r.length()
	switch r.typ() {
	case cmdCache:
		c.sendOK(r.handle())
	case cmdBlockStatus:
		c.blockStatusReply(r.handle(), int64(off), int64(n), r.flags()&cmdFlagReqOne != 0)
	case cmdRead:
		c.read(ctx, r.handle(), int64(off), int64(n), r.flags()&cmdFlagDF != 0)
	}
}

// check answers the requests that need no work (flush, refused commands,
// bad flags or ranges) and reports whether r is left to serve.
func (c *conn) check(r *request) bool {
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
		return false
	case cmdFlush:
	case cmdCache:
	default:
		c.sendError(h, errInval, fmt.Sprintf("unknown command %d", r.typ()))
		return false
	}
	if flags&^allowed != 0 {
		c.sendError(h, errInval, fmt.Sprintf("%s: unsupported flags %#x", cmdName(r.typ()), flags&^allowed))
		return false
	}
	if r.typ() == cmdFlush {
		c.sendOK(h)
		return false
	}
	if off > uint64(c.size) || uint64(n) > uint64(c.size)-off {
		c.sendError(h, errInval, fmt.Sprintf("%s of [%d, +%d) beyond the export's %d bytes", cmdName(r.typ()), off, n, c.size))
		return false
	}
	if r.typ() != cmdBlockStatus && int64(n) > int64(c.s.opts.MaxRequest) {
		c.sendError(h, errInval, fmt.Sprintf("%s of %d bytes, over the %d-byte limit", cmdName(r.typ()), n, c.s.opts.MaxRequest))
		return false
	}
	return true
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
	img := c.extents
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

// piece is a part of a data run: sent from src at soff (located), or read
// into b, a slice of the reply's buffer.
type piece struct {
	n    int64
	src  syscall.RawConn
	soff int64
	b    []byte
}

// pieces splits the data run [off, off+n) into located pieces (when the
// connection can send from files) and pieces to read, at most left of them.
func (c *conn) pieces(off, n int64, left *int) []piece {
	lc, _ := c.exp.Image.(formats.Locator)
	if c.sendTo == nil || lc == nil {
		*left--
		return []piece{{n: n}}
	}
	var ps []piece
	add := func(p piece) {
		if k := len(ps) - 1; p.src == nil && k >= 0 && ps[k].src == nil {
			ps[k].n += p.n
			return
		}
		ps = append(ps, p)
		*left--
	}
	end := off + n
	for pos := off; pos < end; {
		if *left <= 1 {
			add(piece{n: end - pos})
			break
		}
		loc, err := lc.Locate(pos, end-pos)
		if err != nil || loc.Len <= 0 || loc.Len > end-pos {
			// ReadAt meets (and reports) what went wrong here.
			add(piece{n: end - pos})
			break
		}
		p := piece{n: loc.Len}
		if sc, ok := loc.R.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				p.src, p.soff = rc, loc.Off
				prefetch(rc, loc.Off, loc.Len)
			}
		}
		add(p)
		pos += loc.Len
	}
	return ps
}

// readJob is an NBD_CMD_READ of [off, off+n), already checked against the
// export's size and the request limit, planned: its runs, the pieces of its
// data runs, and the bytes of them to read into a buffer.
type readJob struct {
	h      uint64
	off, n int64
	whole  bool // one content chunk (or a simple reply), zeros included
	runs   []run
	pieces [][]piece // per data run
	need   int64     // bytes of pieces to read (not located)
}

// read answers NBD_CMD_READ of [off, off+n), already checked against the
// export's size and the request limit.
func (c *conn) read(ctx context.Context, h uint64, off, n int64, df bool) {
	c.finishRead(ctx, c.prepareRead(h, off, n, df))
}

// prepareRead plans a read from the image's metadata: no data is read.
func (c *conn) prepareRead(h uint64, off, n int64, df bool) *readJob {
	j := &readJob{h: h, off: off, n: n}
	if n == 0 {
		return j
	}
	j.runs = c.plan(off, n)
	var data int64
	for _, r := range j.runs {
		if r.data {
			data += r.n
		}
	}
	// Without structured replies, and with DF when some of the range is
	// data, the whole range goes out as one piece, zeros included.
	j.whole = !c.structured || (df && data > 0)
	// Data runs: located pieces go out from their files, the rest is read
	// into one buffer.
	j.pieces = make([][]piece, len(j.runs))
	left := maxPieces
	for i, r := range j.runs {
		if !r.data {
			continue
		}
		j.pieces[i] = c.pieces(r.off, r.n, &left)
		for _, p := range j.pieces[i] {
			if p.src == nil {
				j.need += p.n
			}
		}
	}
	return j
}

// finishRead reads what j needs into a buffer (waiting for the buffer
// budget) and sends the reply.
func (c *conn) finishRead(ctx context.Context, j *readJob) {
	h := j.h
	if j.n == 0 {
		if c.structured {
			c.send(bytesReply(chunk(replyFlagDone, chunkNone, h, nil)))
		} else {
			c.sendOK(h)
		}
		return
	}
	rep := &reply{}
	if j.need > 0 {
		// Charge what the pooled buffer really holds.
		charged, err := c.s.budget.acquire(ctx, int64(poolSize(int(j.need))))
		if err != nil {
			return // the connection is going away
		}
		rep.charged = charged
		rep.buf = c.s.pool.get(int(j.need))
		buf := *rep.buf
		pos := 0
		for i, r := range j.runs {
			if !r.data {
				continue
			}
			at := r.off
			for k := range j.pieces[i] {
				p := &j.pieces[i][k]
				if p.src == nil {
					p.b = buf[pos : pos+int(p.n)]
					pos += int(p.n)
					if m, err := c.exp.Image.ReadAt(p.b, at); m < len(p.b) || (err != nil && err != io.EOF) {
						if err == nil {
							err = io.ErrUnexpectedEOF
						}
						c.release(rep)
						c.s.logf("nbd: export %q: read [%d, +%d): %v", c.exp.Name, at, p.n, err)
						c.sendError(h, errIO, fmt.Sprintf("read error at offset %d", at))
						return
					}
				}
				at += p.n
			}
		}
	}
	c.dataRead.Add(j.n)

	// addRun appends run i's bytes to the reply: zeros from the server's
	// zero page, data pieces from their file or the buffer.
	addRun := func(i int) {
		r := j.runs[i]
		if !r.data {
			for left := r.n; left > 0; {
				z := c.s.zeros[:min(left, int64(len(c.s.zeros)))]
				rep.parts = append(rep.parts, part{b: z})
				left -= int64(len(z))
			}
			return
		}
		for _, p := range j.pieces[i] {
			if p.src != nil {
				rep.parts = append(rep.parts, part{src: p.src, off: p.soff, n: p.n})
			} else {
				rep.parts = append(rep.parts, part{b: p.b})
			}
		}
	}
	switch {
	case !c.structured:
		hdr := make([]byte, len(simpleReply{}))
		putSimpleReply(hdr, 0, h)
		rep.parts = append(rep.parts, part{b: hdr})
		for i := range j.runs {
			addRun(i)
		}
	case j.whole:
		rep.parts = append(rep.parts, part{b: offsetData(replyFlagDone, h, j.off, int(j.n))})
		for i := range j.runs {
			addRun(i)
		}
	default:
		for i, r := range j.runs {
			var fl uint16
			if i == len(j.runs)-1 {
				fl = replyFlagDone
			}
			if !r.data {
				p := make([]byte, offsetHoleLen)
				be.PutUint64(p, uint64(r.off))
				be.PutUint32(p[8:], uint32(r.n))
				rep.parts = append(rep.parts, part{b: chunk(fl, chunkOffsetHole, h, p)})
				continue
			}
			rep.parts = append(rep.parts, part{b: offsetData(fl, h, r.off, int(r.n))})
			addRun(i)
		}
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
	err := formats.Walk(c.extents, off, n, func(e formats.Extent) error {
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
	c.send(bytesReply(chunk(replyFlagDone, chunkBlockStatus, h, p)))
}

// sendOK sends a successful reply without payload.
func (c *conn) sendOK(h uint64) {
	b := make([]byte, len(simpleReply{}))
	putSimpleReply(b, 0, h)
	c.send(bytesReply(b))
}

// sendError sends an error reply: a structured error chunk with msg when
// structured replies were negotiated, else a simple reply.
func (c *conn) sendError(h uint64, errno uint32, msg string) {
	if !c.structured {
		b := make([]byte, len(simpleReply{}))
		putSimpleReply(b, errno, h)
		c.send(bytesReply(b))
		return
	}
	msg = msg[:min(len(msg), maxString)]
	p := make([]byte, errorFixed, errorFixed+len(msg))
	be.PutUint32(p, errno)
	be.PutUint16(p[4:], uint16(len(msg)))
	c.send(bytesReply(chunk(replyFlagDone, chunkError, h, append(p, msg...))))
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
	w := &replyWriter{conn: c.nc, sendTo: c.sendTo}
	if !c.tls {
		// Write to the socket itself (writev, sendfile), counting here.
		w.conn, w.count = c.raw.Conn, &c.raw.out
	}
	var werr error
	for r := range c.replies {
		if werr == nil {
			c.setWriteDeadline()
			werr = w.write(r.parts)
			if werr == nil && len(c.replies) == 0 {
				werr = w.flush()
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
		werr = w.flush()
	}
	return werr
}

// Sizes of the reply writer's batching.
const (
	smallPart  = 4 << 10  // parts below this are copied into the batch
	batchBytes = 64 << 10 // the batch is written when it would grow past this
)

// replyWriter writes the parts of replies: small ones (headers, block
// status, errors) gathered into one batch, large ones written from where
// they are with the batch in front (writev), located ones with sendfile.
// Once write returns it holds no reference to the parts, so their buffers
// may be recycled.
type replyWriter struct {
	conn   net.Conn
	count  *atomic.Int64   // bytes written, when conn does not count them
	sendTo syscall.RawConn // conn's socket, when it can receive sendfile
	batch  []byte
}

func (w *replyWriter) write(parts []part) error {
	for _, p := range parts {
		switch {
		case p.src != nil:
			if err := w.flush(); err != nil {
				return err
			}
			n, err := sendFile(w.sendTo, p.src, p.off, p.n)
			w.counted(n)
			if err != nil {
				return fmt.Errorf("sending [%d, +%d) of the image's file: %w", p.off, p.n, err)
			}
		case len(p.b) < smallPart:
			if len(w.batch)+len(p.b) > batchBytes {
				if err := w.flush(); err != nil {
					return err
				}
			}
			w.batch = append(w.batch, p.b...)
		default:
			bufs := net.Buffers{w.batch, p.b}
			n, err := bufs.WriteTo(w.conn)
			w.counted(n)
			w.batch = w.batch[:0]
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// flush writes the batch.
func (w *replyWriter) flush() error {
	if len(w.batch) == 0 {
		return nil
	}
	n, err := w.conn.Write(w.batch)
	w.counted(int64(n))
	w.batch = w.batch[:0]
	return err
}

func (w *replyWriter) counted(n int64) {
	if w.count != nil {
		w.count.Add(n)
	}
}
