package nbd

// A small NBD client for tests. It encodes messages by hand from the
// protocol document with encoding/binary rather than with the server's own
// layouts, so that it checks them.

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

type testClient struct {
	t  testing.TB
	nc net.Conn
	r  *bufio.Reader
}

func newClient(t testing.TB, nc net.Conn) *testClient {
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &testClient{t: t, nc: nc, r: bufio.NewReader(nc)}
}

func (c *testClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *testClient) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("client read of %d bytes: %v", n, err)
	}
	return b
}

// expectClosed checks that the server closes the connection (after
// possibly sending something first).
func (c *testClient) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		c.t.Fatalf("waiting for the server to close: %v", err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// greet reads the server's greeting and sends client flags.
func (c *testClient) greet(flags uint32) {
	c.t.Helper()
	g := c.read(18)
	if string(g[:8]) != "NBDMAGIC" || string(g[8:16]) != "IHAVEOPT" {
		c.t.Fatalf("greeting %q", g)
	}
	if hf := binary.BigEndian.Uint16(g[16:]); hf != 3 {
		c.t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", hf)
	}
	c.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (c *testClient) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := []byte("IHAVEOPT")
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *testClient) optReply() optReply {
	c.t.Helper()
	h := c.read(20)
	if m := binary.BigEndian.Uint64(h); m != 0x3e889045565a9 {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = c.read(int(binary.BigEndian.Uint32(h[16:])))
	return r
}

// expectReply reads one option reply and checks its option and type.
func (c *testClient) expectReply(opt, typ uint32) optReply {
	c.t.Helper()
	r := c.optReply()
	if r.opt != opt || r.typ != typ {
		c.t.Fatalf("reply to option %d: option %d type %#x (%q), want type %#x", opt, r.opt, r.typ, r.data, typ)
	}
	return r
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// exportInfo is what NBD_OPT_INFO / NBD_OPT_GO told.
type exportInfo struct {
	size               uint64
	flags              uint16
	name, description  string
	hasName, hasDesc   bool
	minBS, prefBS, max uint32
}

// infoReplies reads NBD_REP_INFO replies up to the final reply, which it
// returns.
func (c *testClient) infoReplies(opt uint32) (exportInfo, optReply) {
	c.t.Helper()
	var e exportInfo
	for {
		r := c.optReply()
		if r.opt != opt {
			c.t.Fatalf("reply to option %d, want %d", r.opt, opt)
		}
		if r.typ != 3 {
			return e, r
		}
		switch typ := binary.BigEndian.Uint16(r.data); typ {
		case 0:
			if len(r.data) != 12 {
				c.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(r.data))
			}
			e.size, e.flags = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
		case 1:
			e.name, e.hasName = string(r.data[2:]), true
		case 2:
			e.description, e.hasDesc = string(r.data[2:]), true
		case 3:
			if len(r.data) != 14 {
				c.t.Fatalf("NBD_INFO_BLOCK_SIZE of %d bytes", len(r.data))
			}
			e.minBS = binary.BigEndian.Uint32(r.data[2:])
			e.prefBS = binary.BigEndian.Uint32(r.data[6:])
			e.max = binary.BigEndian.Uint32(r.data[10:])
		}
	}
}

// negotiate runs the usual handshake: fixed newstyle without zeroes,
// optionally structured replies and base:allocation, then NBD_OPT_GO.
func (c *testClient) negotiate(name string, structured, meta bool) exportInfo {
	c.t.Helper()
	c.greet(3)
	if structured {
		c.sendOpt(8, nil)
		c.expectReply(8, 1)
	}
	if meta {
		c.sendOpt(10, metaData(name, "base:allocation"))
		r := c.expectReply(10, 4)
		if string(r.data[4:]) != "base:allocation" {
			c.t.Fatalf("meta context %q", r.data[4:])
		}
		c.expectReply(10, 1)
	}
	c.sendOpt(7, infoData(name, 1, 2, 3))
	e, final := c.infoReplies(7)
	if final.typ != 1 {
		c.t.Fatalf("NBD_OPT_GO: reply %#x %q", final.typ, final.data)
	}
	return e
}

// request sends a transmission request.
func (c *testClient) request(flags, typ uint16, handle, off uint64, n uint32, payload []byte) {
	c.t.Helper()
	c.write(encodeRequest(flags, typ, handle, off, n, payload))
}

func encodeRequest(flags, typ uint16, handle, off uint64, n uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, n)
	return append(b, payload...)
}

// chunkMsg is one reply message: a simple reply (simple set) or one
// structured chunk.
type chunkMsg struct {
	simple  bool
	errno   uint32 // simple reply error
	flags   uint16
	typ     uint16
	handle  uint64
	payload []byte
}

// readMsg reads one reply message; readLen gives the data length of a
// simple reply to a read for its handle (0 for other commands).
func (c *testClient) readMsg(readLen func(handle uint64) int) chunkMsg {
	c.t.Helper()
	h := c.read(4)
	switch m := binary.BigEndian.Uint32(h); m {
	case 0x67446698:
		b := c.read(12)
		msg := chunkMsg{simple: true, errno: binary.BigEndian.Uint32(b), handle: binary.BigEndian.Uint64(b[4:])}
		if msg.errno == 0 && readLen != nil {
			msg.payload = c.read(readLen(msg.handle))
		}
		return msg
	case 0x668e33ef:
		b := c.read(16)
		msg := chunkMsg{flags: binary.BigEndian.Uint16(b), typ: binary.BigEndian.Uint16(b[2:]), handle: binary.BigEndian.Uint64(b[4:])}
		msg.payload = c.read(int(binary.BigEndian.Uint32(b[12:])))
		return msg
	default:
		c.t.Fatalf("reply magic %#x", m)
	}
	return chunkMsg{}
}

// readResult is a whole reply to a read, reassembled.
type readResult struct {
	errno      uint32
	data       []byte
	dataChunks int
	holeChunks int
	holeBytes  int64
	chunks     []chunkMsg
}

// collect reads reply messages until the reply to each of the handles is
// complete (replies of several requests may interleave), checking chunk
// rules: content within the request, no overlap, DONE last.
func (c *testClient) collect(reqs map[uint64][2]uint64) map[uint64]*readResult {
	c.t.Helper()
	res := map[uint64]*readResult{}
	type span struct{ off, n uint64 }
	covered := map[uint64][]span{}
	pending := len(reqs)
	for pending > 0 {
		msg := c.readMsg(func(h uint64) int { return int(reqs[h][1]) })
		req, ok := reqs[msg.handle]
		if !ok {
			c.t.Fatalf("reply for unknown handle %d", msg.handle)
		}
		r := res[msg.handle]
		if r == nil {
			r = &readResult{data: make([]byte, req[1])}
			res[msg.handle] = r
		}
		r.chunks = append(r.chunks, msg)
		if msg.simple {
			r.errno = msg.errno
			if msg.errno == 0 {
				copy(r.data, msg.payload)
			}
			pending--
			continue
		}
		mark := func(off, n uint64) {
			if off < req[0] || n > req[1] || off-req[0] > req[1]-n || n == 0 {
				c.t.Fatalf("handle %d: chunk [%d, +%d) outside request [%d, +%d)", msg.handle, off, n, req[0], req[1])
			}
			covered[msg.handle] = append(covered[msg.handle], span{off, n})
		}
		switch msg.typ {
		case 0:
		case 1:
			off := binary.BigEndian.Uint64(msg.payload)
			d := msg.payload[8:]
			mark(off, uint64(len(d)))
			copy(r.data[off-req[0]:], d)
			r.dataChunks++
		case 2:
			if len(msg.payload) != 12 {
				c.t.Fatalf("OFFSET_HOLE payload of %d bytes", len(msg.payload))
			}
			off, n := binary.BigEndian.Uint64(msg.payload), binary.BigEndian.Uint32(msg.payload[8:])
			mark(off, uint64(n))
			r.holeChunks++
			r.holeBytes += int64(n)
		case 5:
			// block status: kept in chunks
		case 0x8001, 0x8002:
			r.errno = binary.BigEndian.Uint32(msg.payload)
			if ml := binary.BigEndian.Uint16(msg.payload[4:]); int(ml) > len(msg.payload)-6 {
				c.t.Fatalf("error chunk message length %d in %d bytes", ml, len(msg.payload))
			}
		default:
			c.t.Fatalf("unknown chunk type %d", msg.typ)
		}
		if msg.flags&1 != 0 {
			pending--
			if r.errno == 0 && msg.typ != 5 {
				// Content chunks must tile the request exactly.
				cv := covered[msg.handle]
				slices.SortFunc(cv, func(a, b span) int { return cmp.Compare(a.off, b.off) })
				pos := req[0]
				for _, sp := range cv {
					if sp.off != pos {
						c.t.Fatalf("handle %d: chunks overlap or leave a gap at %d", msg.handle, min(pos, sp.off))
					}
					pos += sp.n
				}
				if pos != req[0]+req[1] {
					c.t.Fatalf("handle %d: chunks cover up to %d of [%d, +%d)", msg.handle, pos, req[0], req[1])
				}
			}
		}
	}
	return res
}

// readAt reads [off, off+n) with one request.
func (c *testClient) readAt(handle, off uint64, n uint32, flags uint16) *readResult {
	c.t.Helper()
	c.request(flags, 0, handle, off, n, nil)
	return c.collect(map[uint64][2]uint64{handle: {off, uint64(n)}})[handle]
}

// simpleCmd sends a command without payload and returns the error of its
// reply (simple or structured).
func (c *testClient) simpleCmd(flags, typ uint16, handle, off uint64, n uint32, payload []byte) uint32 {
	c.t.Helper()
	c.request(flags, typ, handle, off, n, payload)
	return c.collect(map[uint64][2]uint64{handle: {off, 0}})[handle].errno
}

// extent is one block status descriptor.
type extent struct{ n, flags uint32 }

func (e extent) String() string { return fmt.Sprintf("%d:%d", e.n, e.flags) }

func (c *testClient) blockStatus(handle, off uint64, n uint32, flags uint16) ([]extent, uint32) {
	c.t.Helper()
	c.request(flags, 7, handle, off, n, nil)
	r := c.collect(map[uint64][2]uint64{handle: {off, uint64(n)}})[handle]
	if r.errno != 0 {
		return nil, r.errno
	}
	var out []extent
	for _, m := range r.chunks {
		if m.typ != 5 {
			continue
		}
		if id := binary.BigEndian.Uint32(m.payload); id != 1 {
			c.t.Fatalf("block status for context %d", id)
		}
		p := m.payload[4:]
		if len(p) == 0 || len(p)%8 != 0 {
			c.t.Fatalf("block status payload of %d bytes", len(m.payload))
		}
		for ; len(p) > 0; p = p[8:] {
			out = append(out, extent{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
	}
	return out, 0
}
