package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// Ends of a connection that are not failures.
var (
	errAbort    = errors.New("client aborted the handshake (NBD_OPT_ABORT)")
	errDisc     = errors.New("client disconnected (NBD_CMD_DISC)")
	errShutdown = errors.New("server shutting down")
	errHangup   = errors.New("client closed the connection")
)

func clean(err error) bool {
	return err == nil || errors.Is(err, errAbort) || errors.Is(err, errDisc) ||
		errors.Is(err, errShutdown) || errors.Is(err, errHangup)
}

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrProtocol)
}

// maxOptions bounds the options of one handshake.
const maxOptions = 4096

// conn is one client connection.
type conn struct {
	s      *Server
	id     uint64
	remote string
	start  time.Time
	raw    *countConn
	nc     net.Conn // raw, or the TLS connection over it

	// Negotiation state.
	noZeroes   bool
	tls        bool
	structured bool
	metaExport int // export whose base:allocation context is selected, -1 if none

	// The export chosen, set when the transmission phase starts.
	exp         *Export
	extents     *cachedExtents // exp.Image, with its Extent answers cached
	size        int64
	tflags      uint16
	blockStatus bool // base:allocation selected for this export

	requests atomic.Int64
	dataRead atomic.Int64

	// Transmission phase.
	replies chan *reply
	cancel  context.CancelFunc // stops workers waiting for buffers
	// sendTo is the socket, when located parts of the image can be sent to
	// it with sendfile (a Locator image, no TLS, Linux).
	sendTo syscall.RawConn
	// shutdownAt, once the server shuts down, is the UnixNano time by
	// which replies must be out.
	shutdownAt atomic.Int64
}

// serveConn runs one connection to its end and closes it.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	c := &conn{
		s:          s,
		id:         s.nextID.Add(1),
		remote:     remoteName(nc),
		start:      time.Now(),
		raw:        &countConn{Conn: nc},
		metaExport: -1,
	}
	c.nc = c.raw
	if b, ok := nc.(interface{ SetWriteBuffer(int) error }); ok {
		b.SetWriteBuffer(sockBuffer)
	}
	s.event(c.makeEvent(ConnOpened, nil))
	err := c.run(ctx)
	c.raw.Close()
	if clean(err) {
		err = nil
	} else {
		s.logf("nbd: connection %d (%s): %v", c.id, c.remote, err)
	}
	s.event(c.makeEvent(ConnClosed, err))
}

// sockBuffer is the socket send buffer asked for: room for several large
// replies, so that the client drains them with fewer wake-ups.
const sockBuffer = 4 << 20

func remoteName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	return "local"
}

func (c *conn) makeEvent(kind EventKind, err error) Event {
	e := Event{
		Kind:     kind,
		ID:       c.id,
		Remote:   c.remote,
		TLS:      c.tls,
		BytesIn:  c.raw.in.Load(),
		BytesOut: c.raw.out.Load(),
		DataRead: c.dataRead.Load(),
		Requests: c.requests.Load(),
		Err:      err,
	}
	if c.exp != nil {
		e.Export = c.exp.Name
	}
	if kind == ConnClosed {
		e.Duration = time.Since(c.start)
	}
	return e
}

func (c *conn) run(ctx context.Context) error {
	// The whole handshake must finish in time; a server shutdown ends it
	// at once.
	if err := c.raw.SetDeadline(time.Now().Add(c.s.opts.HandshakeTimeout)); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(time.Unix(1, 0)) })
	err := c.handshake(ctx)
	stopped := stop()
	if err != nil {
		if !stopped || ctx.Err() != nil {
			return errShutdown
		}
		return fmt.Errorf("handshake: %w", err)
	}
	if err := c.raw.SetDeadline(time.Time{}); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errShutdown
	}
	return c.transmit(ctx)
}

// handshake runs the fixed newstyle negotiation up to the transmission
// phase.
func (c *conn) handshake(ctx context.Context) error {
	g := newGreeting(flagFixedNewstyle | flagNoZeroes)
	if _, err := c.nc.Write(g[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.nc, cf[:]); err != nil {
		return readErr(err, "client flags")
	}
	flags := be.Uint32(cf[:])
	if flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return protoErr("unknown client flags %#x", flags)
	}
	c.noZeroes = flags&clientNoZeroes != 0
	tlsRequired := c.s.opts.TLS != nil && !c.s.opts.AllowPlaintext
	if tlsRequired && flags&clientFixedNewstyle == 0 {
		return protoErr("TLS is required and the client does not speak fixed newstyle")
	}
	for i := 0; ; i++ {
		if i == maxOptions {
			return protoErr("more than %d options", maxOptions)
		}
		var h optHeader
		if _, err := io.ReadFull(c.nc, h[:]); err != nil {
			return readErr(err, "option header")
		}
		if h.magic() != magicOpt {
			return protoErr("option header magic %#016x, want IHAVEOPT", h.magic())
		}
		opt, n := h.option(), h.length()
		if n > maxOptionLen {
			return protoErr("%s with %d bytes of data (limit %d)", optName(opt), n, maxOptionLen)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.nc, data); err != nil {
			return readErr(err, optName(opt)+" data")
		}
		if tlsRequired && !c.tls {
			switch opt {
			case optStartTLS, optAbort:
			case optExportName:
				return protoErr("NBD_OPT_EXPORT_NAME before TLS, which is required")
			default:
				if err := c.optReply(opt, repErrTLSReqd, []byte("TLS is required: send NBD_OPT_STARTTLS first")); err != nil {
					return err
				}
				continue
			}
		}
		done, err := c.option(ctx, opt, data)
		if err != nil || done {
			return err
		}
	}
}

// option answers one option; done reports the start of the transmission
// phase.
func (c *conn) option(ctx context.Context, opt uint32, data []byte) (done bool, err error) {
	switch opt {
	case optExportName:
		idx, ok := c.s.lookup(string(data))
		if !ok {
			// This option cannot fail politely: the protocol says to
			// disconnect.
			return false, protoErr("NBD_OPT_EXPORT_NAME: no export named %q", data)
		}
		c.choose(idx)
		b := make([]byte, 10, 10+zeroPad)
		be.PutUint64(b, uint64(c.size))
		be.PutUint16(b[8:], c.tflags)
		if !c.noZeroes {
			b = b[:10+zeroPad]
		}
		_, err := c.nc.Write(b)
		return err == nil, err

	case optAbort:
		// The client may already have hung up: a failed write is fine.
		c.optReply(opt, repAck, nil)
		return false, errAbort

	case optList:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for _, e := range c.s.exports {
			b := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			be.PutUint32(b, uint32(len(e.Name)))
			b = append(append(b, e.Name...), e.Description...)
			if err := c.optReply(opt, repServer, b); err != nil {
				return false, err
			}
		}
		return false, c.optReply(opt, repAck, nil)

	case optStartTLS:
		switch {
		case c.s.opts.TLS == nil:
			return false, c.optReply(opt, repErrUnsup, []byte("TLS is not configured on this server"))
		case c.tls:
			return false, c.optReply(opt, repErrInvalid, []byte("TLS is already started"))
		case len(data) != 0:
			return false, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
		}
		if err := c.optReply(opt, repAck, nil); err != nil {
			return false, err
		}
		tc := tls.Server(c.raw, c.s.opts.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return false, fmt.Errorf("TLS: %w", err)
		}
		c.nc, c.tls = tc, true
		// Nothing negotiated before TLS survives it.
		c.structured, c.metaExport = false, -1
		return false, nil

	case optInfo, optGo:
		r, err := parseInfoRequest(data)
		if err != nil {
			return false, c.optReply(opt, repErrInvalid, []byte(optName(opt)+": "+err.Error()))
		}
		idx, ok := c.s.lookup(r.name)
		if !ok {
			return false, c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export named %q", r.name))
		}
		if err := c.infoReplies(opt, idx, r.infos); err != nil {
			return false, err
		}
		if err := c.optReply(opt, repAck, nil); err != nil {
			return false, err
		}
		if opt == optGo {
			c.choose(idx)
			return true, nil
		}
		return false, nil

	case optStructuredRepl:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)

	case optListMetaCtx, optSetMetaCtx:
		if opt == optSetMetaCtx {
			// The selection is replaced, even when the option fails.
			c.metaExport = -1
		}
		if !c.structured {
			return false, c.optReply(opt, repErrInvalid, []byte("negotiate NBD_OPT_STRUCTURED_REPLY first"))
		}
		r, err := parseMetaRequest(data)
		if err != nil {
			return false, c.optReply(opt, repErrInvalid, []byte(optName(opt)+": "+err.Error()))
		}
		idx, ok := c.s.lookup(r.name)
		if !ok {
			return false, c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export named %q", r.name))
		}
		match := false
		for _, q := range r.queries {
			if len(q) > maxString {
				return false, c.optReply(opt, repErrInvalid, []byte("query over 4096 bytes"))
			}
			match = match || q == metaBaseAllocation || (opt == optListMetaCtx && q == metaBaseNamespace)
		}
		if opt == optListMetaCtx && len(r.queries) == 0 {
			match = true // no query lists every context
		}
		if match {
			id := uint32(0) // reserved in NBD_OPT_LIST_META_CONTEXT replies
			if opt == optSetMetaCtx {
				id = metaIDAllocation
				c.metaExport = idx
			}
			b := make([]byte, 4, 4+len(metaBaseAllocation))
			be.PutUint32(b, id)
			if err := c.optReply(opt, repMetaContext, append(b, metaBaseAllocation...)); err != nil {
				return false, err
			}
		}
		return false, c.optReply(opt, repAck, nil)
	}
	return false, c.optReply(opt, repErrUnsup, fmt.Appendf(nil, "%s is not supported", optName(opt)))
}

// infoReplies sends the NBD_REP_INFO replies of NBD_OPT_INFO / NBD_OPT_GO:
// always the export's size and flags and its block sizes, its name and
// description when asked.
func (c *conn) infoReplies(opt uint32, idx int, infos []uint16) error {
	e := &c.s.exports[idx]
	b := make([]byte, 12)
	be.PutUint16(b, infoExport)
	be.PutUint64(b[2:], uint64(e.Image.Size()))
	be.PutUint16(b[10:], c.transmissionFlags())
	if err := c.optReply(opt, repInfo, b); err != nil {
		return err
	}
	// The server enforces a maximum request size, so it always tells.
	b = make([]byte, 14)
	be.PutUint16(b, infoBlockSize)
	be.PutUint32(b[2:], 1) // minimum: any alignment
	be.PutUint32(b[6:], uint32(preferredBlock(c.s.opts.MaxRequest)))
	be.PutUint32(b[10:], uint32(c.s.opts.MaxRequest))
	if err := c.optReply(opt, repInfo, b); err != nil {
		return err
	}
	for _, typ := range dedup(infos) {
		var s string
		switch typ {
		case infoName:
			s = e.Name
		case infoDescription:
			if e.Description == "" {
				continue
			}
			s = e.Description
		default:
			continue
		}
		b := make([]byte, 2, 2+len(s))
		be.PutUint16(b, typ)
		if err := c.optReply(opt, repInfo, append(b, s...)); err != nil {
			return err
		}
	}
	return nil
}

func dedup(v []uint16) []uint16 {
	var out []uint16
	seen := map[uint16]bool{}
	for _, x := range v {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// transmissionFlags are the flags of the export for the state negotiated
// so far: read-only, flush and cache accepted (no-ops), safe for several
// connections (nothing is cached), and DF with structured replies.
func (c *conn) transmissionFlags() uint16 {
	f := uint16(tflagHasFlags | tflagReadOnly | tflagSendFlush | tflagSendCache | tflagCanMultiConn)
	if c.structured {
		f |= tflagSendDF
	}
	return f
}

// choose selects export idx for the transmission phase.
func (c *conn) choose(idx int) {
	c.exp = &c.s.exports[idx]
	c.extents = &cachedExtents{Image: c.exp.Image, x: c.s.extents[idx]}
	c.size = c.exp.Image.Size()
	c.tflags = c.transmissionFlags()
	c.blockStatus = c.structured && c.metaExport == idx
}

// lookup finds an export; the empty name is the first.
func (s *Server) lookup(name string) (int, bool) {
	if name == "" {
		return 0, true
	}
	for i := range s.exports {
		if s.exports[i].Name == name {
			return i, true
		}
	}
	return 0, false
}

// optReply sends one option reply.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	if typ&(1<<31) != 0 && len(data) > maxString {
		data = data[:maxString] // an error message that quotes the client
	}
	h := newOptReplyHeader(opt, typ, len(data))
	_, err := c.nc.Write(append(h[:], data...))
	return err
}

// readErr turns a failed read of what into the connection's error.
func readErr(err error, what string) error {
	err = bareNetErr(err)
	switch {
	case errors.Is(err, io.EOF):
		return errHangup
	case errors.Is(err, io.ErrUnexpectedEOF):
		return protoErr("%s truncated", what)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("reading %s: timed out: %w", what, err)
	}
	return fmt.Errorf("reading %s: %w", what, err)
}

// bareNetErr drops the addresses a *net.OpError carries (the connection's
// own name says who the client is), keeping the cause.
func bareNetErr(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// countConn counts the bytes read and written on a connection.
type countConn struct {
	net.Conn
	in, out atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}
