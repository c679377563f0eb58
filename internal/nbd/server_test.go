package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

func twoExports() []Export {
	return []Export{
		{Name: "disk", Description: "the test disk", Image: testImage()},
		{Name: "small", Image: synth.New(8192, []formats.Extent{{Off: 0, Len: 4096, Kind: formats.Data}}, 9)},
	}
}

func want(img formats.Image, off, n int64) []byte {
	b := make([]byte, n)
	img.ReadAt(b, off)
	return b
}

func TestHandshakeGo(t *testing.T) {
	ts := startServer(t, twoExports(), Options{})
	for _, tc := range []struct {
		name       string
		export     string
		structured bool
		wantName   string
		wantSize   uint64
	}{
		{"named", "disk", true, "disk", uint64(testImage().Size())},
		{"default export", "", true, "disk", uint64(testImage().Size())},
		{"second, simple replies", "small", false, "small", 8192},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, dialUnix(t, ts.path))
			e := c.negotiate(tc.export, tc.structured, false)
			if e.size != tc.wantSize || e.name != tc.wantName || !e.hasName {
				t.Errorf("export info %+v", e)
			}
			wantFlags := uint16(tflagHasFlags | tflagReadOnly | tflagSendFlush | tflagSendCache | tflagCanMultiConn)
			if tc.structured {
				wantFlags |= tflagSendDF
			}
			if e.flags != wantFlags {
				t.Errorf("transmission flags %#x, want %#x", e.flags, wantFlags)
			}
			if e.minBS != 1 || e.prefBS != PreferredBlock || e.max != DefaultMaxRequest {
				t.Errorf("block sizes %d/%d/%d", e.minBS, e.prefBS, e.max)
			}
			if tc.wantName == "disk" && e.description != "the test disk" {
				t.Errorf("description %q", e.description)
			}
			if tc.wantName == "small" && e.hasDesc {
				t.Errorf("empty description sent")
			}
			r := c.readAt(1, 0, 4096, 0)
			if r.errno != 0 {
				t.Fatalf("read: error %d", r.errno)
			}
			img := ts.s.exports[0].Image
			if tc.wantName == "small" {
				img = ts.s.exports[1].Image
			}
			if !bytes.Equal(r.data, want(img, 0, 4096)) {
				t.Errorf("read data differs")
			}
			c.request(0, cmdDisc, 2, 0, 0, nil)
			c.expectClosed()
			ts.settle()
		})
	}
	ev := ts.waitClosed(3)
	for _, e := range ev {
		if e.Err != nil || e.Export == "" || e.Requests != 2 || e.BytesIn == 0 || e.BytesOut == 0 || e.DataRead != 4096 {
			t.Errorf("close event %+v", e)
		}
	}
}

// TestBlockSizes: the preferred block size is PreferredBlock unless the
// maximum request is smaller; then the largest power of two below it, so
// that the maximum is never below the preferred size.
func TestBlockSizes(t *testing.T) {
	for _, tc := range []struct{ maxRequest, wantPref int }{
		{0, PreferredBlock},
		{4 << 20, PreferredBlock},
		{PreferredBlock, PreferredBlock},
		{80 << 10, 64 << 10},
		{4096, 4096},
	} {
		ts := startServer(t, twoExports(), Options{MaxRequest: tc.maxRequest})
		c := newClient(t, dialUnix(t, ts.path))
		e := c.negotiate("disk", true, false)
		wantMax := uint32(tc.maxRequest)
		if tc.maxRequest == 0 {
			wantMax = DefaultMaxRequest
		}
		if e.minBS != 1 || e.prefBS != uint32(tc.wantPref) || e.max != wantMax {
			t.Errorf("MaxRequest %d: block sizes %d/%d/%d, want 1/%d/%d", tc.maxRequest, e.minBS, e.prefBS, e.max, tc.wantPref, wantMax)
		}
	}
}

func TestHandshakeExportName(t *testing.T) {
	ts := startServer(t, twoExports(), Options{})
	for _, tc := range []struct {
		name     string
		flags    uint32
		export   string
		wantSize int64
	}{
		{"zeroes", 1, "small", 8192},
		{"no zeroes", 3, "small", 8192},
		{"default", 3, "", testImage().Size()},
		{"not fixed newstyle", 0, "disk", testImage().Size()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, dialUnix(t, ts.path))
			c.greet(tc.flags)
			c.sendOpt(optExportName, []byte(tc.export))
			b := c.read(10)
			if sz := binary.BigEndian.Uint64(b); sz != uint64(tc.wantSize) {
				t.Errorf("size %d, want %d", sz, tc.wantSize)
			}
			if tc.flags&2 == 0 {
				if z := c.read(124); !bytes.Equal(z, make([]byte, 124)) {
					t.Errorf("padding not zero")
				}
			}
			// Simple replies, straight after.
			r := c.readAt(7, 100, 1000, 0)
			if r.errno != 0 || !r.chunks[0].simple {
				t.Fatalf("read after EXPORT_NAME: %+v", r.chunks[0])
			}
			c.request(0, cmdDisc, 8, 0, 0, nil)
			c.expectClosed()
			ts.settle()
		})
	}
}

func TestHandshakeOptions(t *testing.T) {
	ts := startServer(t, twoExports(), Options{})
	c := newClient(t, dialUnix(t, ts.path))
	c.greet(3)

	// Unknown options, including a withdrawn one and one with data, are
	// answered NBD_REP_ERR_UNSUP and the session goes on.
	for _, opt := range []uint32{optPeekExport, optExtendedHdrs, 12345, 0xffffffff} {
		c.sendOpt(opt, []byte("some data"))
		c.expectReply(opt, repErrUnsup)
	}
	// LIST: every export with its description.
	c.sendOpt(optList, nil)
	for _, e := range ts.s.exports {
		r := c.expectReply(optList, repServer)
		n := binary.BigEndian.Uint32(r.data)
		if string(r.data[4:4+n]) != e.Name || string(r.data[4+n:]) != e.Description {
			t.Errorf("NBD_REP_SERVER %q", r.data)
		}
	}
	c.expectReply(optList, repAck)
	c.sendOpt(optList, []byte{0})
	c.expectReply(optList, repErrInvalid)

	// INFO: known, unknown and malformed.
	c.sendOpt(optInfo, infoData("small"))
	if e, r := c.infoReplies(optInfo); r.typ != repAck || e.size != 8192 || e.hasName {
		t.Errorf("INFO small: %+v %#x", e, r.typ)
	}
	c.sendOpt(optInfo, infoData("nope", infoName))
	if _, r := c.infoReplies(optInfo); r.typ != repErrUnknown {
		t.Errorf("INFO of an unknown export: %#x", r.typ)
	}
	for _, bad := range [][]byte{nil, {0, 0, 0, 9, 0, 0}, append(infoData("disk", 1), 0), infoData("disk", 1, 2)[:11]} {
		c.sendOpt(optInfo, bad)
		c.expectReply(optInfo, repErrInvalid)
	}
	c.sendOpt(optGo, infoData("nope"))
	c.expectReply(optGo, repErrUnknown)

	// STARTTLS without TLS configured.
	c.sendOpt(optStartTLS, nil)
	c.expectReply(optStartTLS, repErrUnsup)

	// Meta contexts need structured replies first.
	c.sendOpt(optSetMetaCtx, metaData("disk", "base:allocation"))
	c.expectReply(optSetMetaCtx, repErrInvalid)
	c.sendOpt(optStructuredRepl, []byte{1})
	c.expectReply(optStructuredRepl, repErrInvalid)
	c.sendOpt(optStructuredRepl, nil)
	c.expectReply(optStructuredRepl, repAck)
	// LIST_META_CONTEXT: all, base:, base:allocation, unknown namespaces.
	for _, q := range [][]string{nil, {"base:"}, {"base:allocation"}, {"qemu:dirty-bitmap:x", "base:allocation"}} {
		c.sendOpt(optListMetaCtx, metaData("disk", q...))
		r := c.expectReply(optListMetaCtx, repMetaContext)
		if string(r.data[4:]) != "base:allocation" || binary.BigEndian.Uint32(r.data) != 0 {
			t.Errorf("LIST_META_CONTEXT %q: %q", q, r.data)
		}
		c.expectReply(optListMetaCtx, repAck)
	}
	c.sendOpt(optListMetaCtx, metaData("disk", "x-other:thing"))
	c.expectReply(optListMetaCtx, repAck)
	c.sendOpt(optListMetaCtx, metaData("nope"))
	c.expectReply(optListMetaCtx, repErrUnknown)
	c.sendOpt(optListMetaCtx, metaData("disk", "base:allocation")[:15])
	c.expectReply(optListMetaCtx, repErrInvalid)
	// SET with "base:" selects nothing.
	c.sendOpt(optSetMetaCtx, metaData("disk", "base:"))
	c.expectReply(optSetMetaCtx, repAck)
	// SET for another export than the one chosen: block status refused.
	c.sendOpt(optSetMetaCtx, metaData("small", "base:allocation"))
	c.expectReply(optSetMetaCtx, repMetaContext)
	c.expectReply(optSetMetaCtx, repAck)

	c.sendOpt(optGo, infoData("disk"))
	if _, r := c.infoReplies(optGo); r.typ != repAck {
		t.Fatalf("GO: %#x", r.typ)
	}
	if _, errno := c.blockStatus(1, 0, 4096, 0); errno != errInval {
		t.Errorf("block status with the context of another export: errno %d, want EINVAL", errno)
	}
	c.request(0, cmdDisc, 2, 0, 0, nil)
	c.expectClosed()

	// ABORT is acknowledged, then the server hangs up.
	c = newClient(t, dialUnix(t, ts.path))
	c.greet(1)
	c.sendOpt(optAbort, nil)
	c.expectReply(optAbort, repAck)
	c.expectClosed()
	for _, e := range ts.waitClosed(2) {
		if e.Err != nil {
			t.Errorf("clean end reported as %v", e.Err)
		}
	}
}

// TestMalformedHandshake sends broken handshakes: each costs a closed
// connection, reported as a protocol error or timeout.
func TestMalformedHandshake(t *testing.T) {
	ts := startServer(t, twoExports(), Options{HandshakeTimeout: 300 * time.Millisecond})
	opt := func(magic string, o, n uint32, data []byte) []byte {
		b := []byte(magic)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, n)
		return append(b, data...)
	}
	for _, tc := range []struct {
		name   string
		send   []byte
		hangup bool // close our side after sending
		proto  bool // expect a protocol error
	}{
		{"unknown client flags", []byte{0, 0, 0, 4}, false, true},
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false, true},
		{"bad option magic", append([]byte{0, 0, 0, 3}, opt("IHAVEOPX", 7, 0, nil)...), false, true},
		{"option too long", append([]byte{0, 0, 0, 3}, opt("IHAVEOPT", 3, 1<<20, nil)...), false, true},
		{"unknown export name", append([]byte{0, 0, 0, 3}, opt("IHAVEOPT", optExportName, 4, []byte("nope"))...), false, true},
		{"truncated flags", []byte{0, 0}, true, true},
		{"truncated option header", append([]byte{0, 0, 0, 3}, "IHAVEO"...), true, true},
		{"truncated option data", append([]byte{0, 0, 0, 3}, opt("IHAVEOPT", optGo, 100, []byte("abc"))...), true, true},
		{"silent after flags", []byte{0, 0, 0, 3}, false, false},
		{"silent", nil, false, false},
		{"vanishes", nil, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(ts.closedEvents())
			nc := dialUnix(t, ts.path)
			c := newClient(t, nc)
			c.read(18)
			c.write(tc.send)
			if tc.hangup {
				nc.(*net.UnixConn).CloseWrite()
			}
			c.expectClosed()
			ev := ts.waitClosed(before + 1)
			e := ev[before]
			if tc.proto != isProto(e.Err) {
				t.Errorf("connection ended with %v; protocol error expected: %v", e.Err, tc.proto)
			}
			if tc.name == "silent" && !errors.Is(e.Err, os.ErrDeadlineExceeded) {
				t.Errorf("silent client ended with %v, want a timeout", e.Err)
			}
			ts.settle()
		})
	}
}

func TestStructuredRead(t *testing.T) {
	img := testImage()
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("disk", true, false)
	size := img.Size()
	for _, tc := range []struct {
		name       string
		off, n     int64
		dataChunks int
		holeBytes  int64
	}{
		{"all data", 0, 4096, 1, 0},
		{"data then zero", 60 << 10, 8 << 10, 1, 4 << 10},
		{"zero and hole merged", 64 << 10, 448 << 10, 0, 448 << 10},
		{"hole data hole", 500 << 10, 1100 << 10, 1, 76<<10 - 512},
		{"unaligned tail", size - 1000, 1000, 1, 0},
		{"whole disk", 0, size, 3, size - (64<<10 + 1024<<10 + 512 + 1<<20 + 1536)},
		{"one byte", 12345, 1, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.readAt(1, uint64(tc.off), uint32(tc.n), 0)
			if r.errno != 0 {
				t.Fatalf("errno %d", r.errno)
			}
			if !bytes.Equal(r.data, want(img, tc.off, tc.n)) {
				t.Errorf("data differs")
			}
			if r.dataChunks != tc.dataChunks || r.holeBytes != tc.holeBytes {
				t.Errorf("%d data chunks, %d hole bytes; want %d, %d", r.dataChunks, r.holeBytes, tc.dataChunks, tc.holeBytes)
			}
			last := r.chunks[len(r.chunks)-1]
			for _, m := range r.chunks[:len(r.chunks)-1] {
				if m.flags&replyFlagDone != 0 {
					t.Errorf("DONE before the last chunk")
				}
			}
			if last.flags&replyFlagDone == 0 {
				t.Errorf("last chunk without DONE")
			}
		})
	}
	// DF: one content chunk, zeros included.
	r := c.readAt(2, 60<<10, 64<<10, cmdFlagDF)
	if r.errno != 0 || r.dataChunks != 1 || r.holeChunks != 0 || !bytes.Equal(r.data, want(img, 60<<10, 64<<10)) {
		t.Errorf("DF read: errno %d, %d data chunks, %d hole chunks", r.errno, r.dataChunks, r.holeChunks)
	}
	r = c.readAt(3, 200<<10, 64<<10, cmdFlagDF)
	if r.errno != 0 || r.dataChunks != 0 || r.holeChunks != 1 {
		t.Errorf("DF read of a hole: errno %d, %d data chunks, %d hole chunks", r.errno, r.dataChunks, r.holeChunks)
	}
	// A zero-length read: a lone NONE chunk.
	r = c.readAt(4, 0, 0, 0)
	if r.errno != 0 || len(r.chunks) != 1 || r.chunks[0].typ != chunkNone {
		t.Errorf("zero-length read: %+v", r.chunks)
	}
}

// countImage counts the bytes read from an image and the reads at once.
type countImage struct {
	formats.Image
	read           atomic.Int64
	inFlight, peak atomic.Int64
	delay          time.Duration
}

func (c *countImage) ReadAt(p []byte, off int64) (int, error) {
	n := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		p0 := c.peak.Load()
		if n <= p0 || c.peak.CompareAndSwap(p0, n) {
			break
		}
	}
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	c.read.Add(int64(len(p)))
	return c.Image.ReadAt(p, off)
}

func TestHolesNeverRead(t *testing.T) {
	img := &countImage{Image: testImage()}
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("", true, false)
	r := c.readAt(1, 0, uint32(img.Size()), 0)
	if r.errno != 0 || !bytes.Equal(r.data, want(img.Image, 0, img.Size())) {
		t.Fatalf("read failed")
	}
	if got, want := img.read.Load(), img.Image.(*synth.Image).DataBytes(); got != want {
		t.Errorf("server read %d bytes of the image, its data is %d", got, want)
	}
}

func TestSimpleRead(t *testing.T) {
	img := &countImage{Image: testImage()}
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("disk", false, false)
	r := c.readAt(1, 0, uint32(img.Size()), 0)
	if r.errno != 0 || !bytes.Equal(r.data, want(img.Image, 0, img.Size())) {
		t.Fatalf("read failed")
	}
	// Zeros are filled in, not read.
	if got, want := img.read.Load(), img.Image.(*synth.Image).DataBytes(); got != want {
		t.Errorf("server read %d bytes of the image, its data is %d", got, want)
	}
	// DF without structured replies is a bad flag.
	if r := c.readAt(2, 0, 512, cmdFlagDF); r.errno != errInval || !r.chunks[0].simple {
		t.Errorf("DF without structured replies: errno %d", r.errno)
	}
}

func TestBlockStatus(t *testing.T) {
	img := testImage()
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("disk", true, true)
	const K = 1024
	size := img.Size()
	for _, tc := range []struct {
		name   string
		off, n int64
		flags  uint16
		want   []extent
	}{
		{"whole", 0, size, 0, []extent{{64 * K, 0}, {128 * K, 2}, {320 * K, 3}, {1024*K + 512, 0}, {512*K - 512, 3}, {1024 * K, 2}, {1024*K + 1536, 0}}},
		{"req one", 0, size, cmdFlagReqOne, []extent{{64 * K, 0}}},
		{"req one clipped", 100 * K, 10 * K, cmdFlagReqOne, []extent{{10 * K, 2}}},
		{"middle", 100 * K, 500 * K, 0, []extent{{92 * K, 2}, {320 * K, 3}, {88 * K, 0}}},
		{"tail", size - 100, 100, 0, []extent{{100, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, errno := c.blockStatus(1, uint64(tc.off), uint32(tc.n), tc.flags)
			if errno != 0 {
				t.Fatalf("errno %d", errno)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("extents %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("extents %v, want %v", got, tc.want)
				}
			}
		})
	}
	for _, tc := range []struct {
		name   string
		off, n uint64
		flags  uint16
	}{
		{"beyond the end", uint64(size) - 10, 20, 0},
		{"offset overflow", 1<<64 - 512, 1024, 0},
		{"zero length", 0, 0, 0},
		{"bad flag", 0, 512, cmdFlagDF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, errno := c.blockStatus(2, tc.off, uint32(tc.n), tc.flags); errno != errInval {
				t.Errorf("errno %d, want EINVAL", errno)
			}
		})
	}
	// Without a context: EINVAL.
	c2 := newClient(t, dialUnix(t, ts.path))
	c2.negotiate("disk", true, false)
	if _, errno := c2.blockStatus(1, 0, 512, 0); errno != errInval {
		t.Errorf("block status without a context: errno %d", errno)
	}
}

// TestRequestErrors: bad requests get the protocol's error codes and the
// connection stays usable.
func TestRequestErrors(t *testing.T) {
	img := testImage()
	size := uint64(img.Size())
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{MaxRequest: 1 << 20})
	for _, structured := range []bool{false, true} {
		name := "simple"
		if structured {
			name = "structured"
		}
		t.Run(name, func(t *testing.T) {
			c := newClient(t, dialUnix(t, ts.path))
			c.negotiate("disk", structured, false)
			for _, tc := range []struct {
				name    string
				flags   uint16
				typ     uint16
				off     uint64
				n       uint32
				payload []byte
				errno   uint32
			}{
				{"read beyond the end", 0, cmdRead, size - 100, 200, nil, errInval},
				{"read past the end", 0, cmdRead, size + 512, 512, nil, errInval},
				{"read offset overflow", 0, cmdRead, 1<<64 - 100, 200, nil, errInval},
				{"read over the limit", 0, cmdRead, 0, 1<<20 + 1, nil, errInval},
				{"read with an unknown flag", 1 << 7, cmdRead, 0, 512, nil, errInval},
				{"write", 0, cmdWrite, 0, 4096, make([]byte, 4096), errPerm},
				{"write with FUA", cmdFlagFUA, cmdWrite, 512, 100, make([]byte, 100), errPerm},
				{"write beyond the end", 0, cmdWrite, size, 512, make([]byte, 512), errPerm},
				{"trim", 0, cmdTrim, 0, 4096, nil, errPerm},
				{"write zeroes", 0, cmdWriteZeroes, 0, 4096, nil, errPerm},
				{"unknown command", 0, 42, 0, 0, nil, errInval},
				{"resize", 0, 8, 0, 0, nil, errInval},
				{"cache", 0, cmdCache, 0, 1 << 20, nil, 0},
				{"cache beyond the end", 0, cmdCache, size, 1, nil, errInval},
				{"flush", 0, cmdFlush, 0, 0, nil, 0},
				{"flush with FUA", cmdFlagFUA, cmdFlush, 0, 0, nil, 0},
				{"flush with a bad flag", cmdFlagReqOne, cmdFlush, 0, 0, nil, errInval},
			} {
				if errno := c.simpleCmd(tc.flags, tc.typ, 9, tc.off, tc.n, tc.payload); errno != tc.errno {
					t.Errorf("%s: errno %d, want %d", tc.name, errno, tc.errno)
				}
				// Still in step.
				if r := c.readAt(10, 4000, 200, 0); r.errno != 0 || !bytes.Equal(r.data, want(img, 4000, 200)) {
					t.Fatalf("after %s: read fails", tc.name)
				}
			}
			// A write over the limit cannot be skipped: the connection ends.
			c.request(0, cmdWrite, 11, 0, 1<<20+1, nil)
			c.expectClosed()
			ts.settle()
		})
	}
	for _, e := range ts.waitClosed(2) {
		if !isProto(e.Err) {
			t.Errorf("oversized write ended the connection with %v, want a protocol error", e.Err)
		}
	}
}

// TestManyInFlight pipelines many requests of every kind on one connection
// over a slow image: replies come back in any order, each correct, and the
// server served several at once but never more than MaxInFlight.
func TestManyInFlight(t *testing.T) {
	img := &countImage{Image: testImage(), delay: 2 * time.Millisecond}
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{MaxInFlight: 8})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("disk", true, true)
	rng := rand.New(rand.NewPCG(1, 2))
	size := img.Size()
	reqs := map[uint64][2]uint64{}
	var batch []byte
	for h := uint64(1); h <= 300; h++ {
		n := 1 + rng.Int64N(64<<10)
		off := rng.Int64N(size - n)
		reqs[h] = [2]uint64{uint64(off), uint64(n)}
		batch = append(batch, encodeRequest(0, cmdRead, h, uint64(off), uint32(n), nil)...)
	}
	// Send from another goroutine: the server may not read them all before
	// we read replies.
	errc := make(chan error, 1)
	go func() { _, err := c.nc.Write(batch); errc <- err }()
	res := c.collect(reqs)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	order := make([]uint64, 0, len(reqs))
	for h, rq := range reqs {
		r := res[h]
		if r.errno != 0 || !bytes.Equal(r.data, want(img.Image, int64(rq[0]), int64(rq[1]))) {
			t.Fatalf("handle %d: errno %d or data differs", h, r.errno)
		}
		order = append(order, h)
	}
	if p := img.peak.Load(); p < 2 || p > 8 {
		t.Errorf("peak of %d reads at once, want 2..8", p)
	}
	t.Logf("peak of %d concurrent reads", img.peak.Load())
}

func TestManyConnections(t *testing.T) {
	img := testImage()
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := net.Dial("unix", ts.path)
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			c := newClient(t, nc)
			c.negotiate("disk", i%2 == 0, i%2 == 0)
			for j := range 20 {
				off := uint64((i*20 + j) * 16384 % int(img.Size()-65536))
				r := c.readAt(uint64(j), off, 65536, 0)
				if r.errno != 0 || !bytes.Equal(r.data, want(img, int64(off), 65536)) {
					t.Errorf("conn %d read %d differs", i, j)
					return
				}
			}
			c.request(0, cmdDisc, 99, 0, 0, nil)
			c.expectClosed()
		}()
	}
	wg.Wait()
	ts.waitClosed(8)
}

// TestClientVanishes: clients that hang up mid-reply, mid-request or
// mid-payload cost their connection only.
func TestClientVanishes(t *testing.T) {
	img := testImage()
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{RequestTimeout: 300 * time.Millisecond})
	for _, tc := range []struct {
		name string
		send func(c *testClient)
		wait bool // wait for the server to close rather than hanging up
	}{
		{"mid reply", func(c *testClient) {
			for h := range uint64(16) {
				c.request(0, cmdRead, h, 0, 1<<20, nil)
			}
			c.read(1000)
		}, false},
		{"mid header", func(c *testClient) { c.write(encodeRequest(0, cmdRead, 1, 0, 512, nil)[:13]) }, false},
		{"mid write payload", func(c *testClient) { c.write(encodeRequest(0, cmdWrite, 1, 0, 4096, make([]byte, 100))) }, false},
		{"stalls mid header", func(c *testClient) { c.write(encodeRequest(0, cmdRead, 1, 0, 512, nil)[:13]) }, true},
		{"stalls mid write payload", func(c *testClient) { c.write(encodeRequest(0, cmdWrite, 1, 0, 4096, make([]byte, 100))) }, true},
		{"garbage request", func(c *testClient) { c.write(bytes.Repeat([]byte{0xAA}, 28)) }, true},
		{"disc with requests in flight", func(c *testClient) {
			for h := range uint64(8) {
				c.request(0, cmdRead, h, 0, 1<<20, nil)
			}
			c.request(0, cmdDisc, 100, 0, 0, nil)
			// Every reply still arrives.
			got := 0
			for range 8 {
				m := c.readMsg(func(uint64) int { return 1 << 20 })
				if m.simple && m.errno == 0 {
					got++
				}
			}
			if got != 8 {
				t.Errorf("%d of 8 replies after NBD_CMD_DISC", got)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(ts.closedEvents())
			nc := dialUnix(t, ts.path)
			c := newClient(t, nc)
			c.negotiate("disk", false, false)
			tc.send(c)
			if tc.wait {
				c.expectClosed()
			} else {
				nc.Close()
			}
			e := ts.waitClosed(before + 1)[before]
			t.Logf("ended with %v", e.Err)
			// The server is fine: a new connection reads.
			c2 := newClient(t, dialUnix(t, ts.path))
			c2.negotiate("disk", true, false)
			if r := c2.readAt(1, 0, 512, 0); r.errno != 0 {
				t.Fatalf("read after: errno %d", r.errno)
			}
			c2.request(0, cmdDisc, 2, 0, 0, nil)
			c2.expectClosed()
			ts.waitClosed(before + 2)
			ts.settle()
		})
	}
}

// TestShutdown cancels Serve with connections in every state.
func TestShutdown(t *testing.T) {
	img := &countImage{Image: testImage(), delay: 20 * time.Millisecond}
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	// One in the handshake, one idle, one with requests in flight.
	hs := newClient(t, dialUnix(t, ts.path))
	hs.read(18)
	idle := newClient(t, dialUnix(t, ts.path))
	idle.negotiate("disk", true, false)
	busy := newClient(t, dialUnix(t, ts.path))
	busy.negotiate("disk", false, false)
	for h := range uint64(4) {
		busy.request(0, cmdRead, h, 0, 64<<10, nil)
	}
	for ts.s.Conns() != 3 || img.inFlight.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// Requests already read are answered before the connection closes.
	answered := make(chan int, 1)
	go func() {
		n := 0
		for {
			var hdr [16]byte
			if _, err := io.ReadFull(busy.r, hdr[:]); err != nil {
				break
			}
			if _, err := io.ReadFull(busy.r, make([]byte, 64<<10)); err != nil {
				break
			}
			n++
		}
		answered <- n
	}()
	ts.stop()
	hs.expectClosed()
	idle.expectClosed()
	n := <-answered
	if n == 0 {
		t.Errorf("no reply to in-flight requests before shutdown")
	}
	t.Logf("%d of 4 in-flight requests answered", n)
	for _, e := range ts.closedEvents() {
		if e.Err != nil {
			t.Errorf("shutdown reported as %v", e.Err)
		}
	}
}

func TestOneShot(t *testing.T) {
	s, err := NewServer(twoExports(), Options{OneShot: true})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sockDir(t), "s")
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	c1 := newClient(t, dialUnix(t, path))
	c1.negotiate("disk", true, false)
	c2 := newClient(t, dialUnix(t, path))
	c2.negotiate("small", true, false)
	c1.request(0, cmdDisc, 1, 0, 0, nil)
	c1.expectClosed()
	select {
	case <-done:
		t.Fatal("Serve returned with a client still connected")
	case <-time.After(50 * time.Millisecond):
	}
	c2.request(0, cmdDisc, 1, 0, 0, nil)
	c2.expectClosed()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("one-shot Serve did not return")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	if g := s.Goroutines(); g != 0 {
		t.Errorf("%d goroutines left", g)
	}
}

func TestMaxConns(t *testing.T) {
	ts := startServer(t, twoExports(), Options{MaxConns: 2})
	a := newClient(t, dialUnix(t, ts.path))
	a.read(18)
	b := newClient(t, dialUnix(t, ts.path))
	b.read(18)
	c := newClient(t, dialUnix(t, ts.path))
	c.expectClosed()
}

func TestTLS(t *testing.T) {
	cfg, certs := testPKI(t)
	img := testImage()
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{TLS: cfg})
	caPEM, _ := os.ReadFile(filepath.Join(certs, "ca-cert.pem"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(certs, "client-cert.pem"), filepath.Join(certs, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("required", func(t *testing.T) {
		c := newClient(t, dialUnix(t, ts.path))
		c.greet(3)
		for _, opt := range []uint32{optList, optGo, optInfo, optStructuredRepl, optSetMetaCtx, 999} {
			c.sendOpt(opt, infoData("disk"))
			c.expectReply(opt, repErrTLSReqd)
		}
		c.sendOpt(optExportName, []byte("disk"))
		c.expectClosed()
	})
	t.Run("not fixed newstyle", func(t *testing.T) {
		c := newClient(t, dialUnix(t, ts.path))
		c.greet(0)
		c.expectClosed()
	})
	t.Run("starttls", func(t *testing.T) {
		nc := dialUnix(t, ts.path)
		c := newClient(t, nc)
		c.greet(3)
		c.sendOpt(optStructuredRepl, nil)
		c.expectReply(optStructuredRepl, repErrTLSReqd)
		c.sendOpt(optStartTLS, []byte{1})
		c.expectReply(optStartTLS, repErrInvalid)
		c.sendOpt(optStartTLS, nil)
		c.expectReply(optStartTLS, repAck)
		tc := tls.Client(nc, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{clientCert}})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = newClient(t, tc)
		c.sendOpt(optStartTLS, nil)
		c.expectReply(optStartTLS, repErrInvalid)
		c.sendOpt(optStructuredRepl, nil)
		c.expectReply(optStructuredRepl, repAck)
		c.sendOpt(optGo, infoData("disk"))
		if e, r := c.infoReplies(optGo); r.typ != repAck || e.size != uint64(img.Size()) {
			t.Fatalf("GO over TLS: %#x %+v", r.typ, e)
		}
		r := c.readAt(1, 0, uint32(img.Size()), 0)
		if r.errno != 0 || !bytes.Equal(r.data, want(img, 0, img.Size())) || r.holeChunks == 0 {
			t.Fatalf("read over TLS")
		}
		c.request(0, cmdDisc, 2, 0, 0, nil)
		c.expectClosed()
	})
	t.Run("no client certificate", func(t *testing.T) {
		nc := dialUnix(t, ts.path)
		c := newClient(t, nc)
		c.greet(3)
		c.sendOpt(optStartTLS, nil)
		c.expectReply(optStartTLS, repAck)
		tc := tls.Client(nc, &tls.Config{RootCAs: roots, ServerName: "localhost"})
		err := tc.Handshake()
		if err == nil {
			// TLS 1.3: the server's refusal comes with the first read.
			_, err = tc.Read(make([]byte, 1))
		}
		if err == nil {
			t.Fatal("TLS without a client certificate accepted")
		}
	})
	ev := ts.waitClosed(4)
	if !ev[2].TLS || ev[2].Err != nil || ev[2].Export != "disk" {
		t.Errorf("TLS session event %+v", ev[2])
	}
}

func TestListenUnix(t *testing.T) {
	dir := sockDir(t)
	path := filepath.Join(dir, "s")
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	if a := ln.Addr().String(); a != path {
		t.Errorf("listener address %q, want %q", a, path)
	}
	if _, err := ListenUnix(path); err == nil {
		t.Errorf("second listener on a live socket")
	}
	ln.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket not removed: %v", err)
	}
	// A stale socket is replaced; a regular file is not.
	stale, _ := net.Listen("unix", path)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err = ListenUnix(path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	ln.Close()
	os.WriteFile(path, nil, 0o600)
	if _, err := ListenUnix(path); err == nil {
		t.Errorf("listening over a regular file")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want the one file", len(entries))
	}
}

func TestNewServerErrors(t *testing.T) {
	img := testImage()
	for _, tc := range []struct {
		name    string
		exports []Export
		opts    Options
	}{
		{"no exports", nil, Options{}},
		{"nil image", []Export{{Name: "a"}}, Options{}},
		{"duplicate", []Export{{Name: "a", Image: img}, {Name: "a", Image: img}}, Options{}},
		{"tiny requests", []Export{{Name: "a", Image: img}}, Options{MaxRequest: 100}},
		{"buffer below request", []Export{{Name: "a", Image: img}}, Options{MaxBuffer: 1 << 20}},
	} {
		if _, err := NewServer(tc.exports, tc.opts); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// TestBudget checks that the buffer budget bounds memory: with a budget
// of one request, parallel big reads of several connections still all
// complete, one at a time.
func TestBudget(t *testing.T) {
	img := &countImage{Image: synth.New(8<<20, []formats.Extent{{Off: 0, Len: 8 << 20, Kind: formats.Data}}, 5)}
	const M = 256 << 10
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{MaxRequest: M, MaxBuffer: M})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := net.Dial("unix", ts.path)
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			c := newClient(t, nc)
			c.negotiate("disk", i%2 == 0, false)
			reqs := map[uint64][2]uint64{}
			for h := range uint64(8) {
				reqs[h] = [2]uint64{h * M, M}
				c.request(0, cmdRead, h, h*M, M, nil)
			}
			for h, r := range c.collect(reqs) {
				if r.errno != 0 || !bytes.Equal(r.data, want(img.Image, int64(h*M), M)) {
					t.Errorf("conn %d handle %d differs", i, h)
				}
			}
		}()
	}
	wg.Wait()
	if p := img.peak.Load(); p != 1 {
		t.Errorf("%d reads at once with a budget of one request", p)
	}
}

// failImage fails reads and extent queries in a range.
type failImage struct {
	formats.Image
	bad int64
}

var errBroken = errors.New("broken sector")

func (f *failImage) ReadAt(p []byte, off int64) (int, error) {
	if off <= f.bad && f.bad < off+int64(len(p)) {
		return 0, errBroken
	}
	return f.Image.ReadAt(p, off)
}

func (f *failImage) Extent(off int64) (formats.Extent, error) {
	if off >= f.bad && off < f.bad+4096 {
		return formats.Extent{}, errBroken
	}
	return f.Image.Extent(off)
}

func TestImageErrors(t *testing.T) {
	img := &failImage{Image: testImage(), bad: 3 << 20}
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	for _, structured := range []bool{false, true} {
		c := newClient(t, dialUnix(t, ts.path))
		c.negotiate("disk", structured, structured)
		if r := c.readAt(1, 3<<20-4096, 8192, 0); r.errno != errIO {
			t.Errorf("read of a bad range: errno %d, want EIO", r.errno)
		}
		if r := c.readAt(2, 0, 4096, 0); r.errno != 0 {
			t.Errorf("read after an error: errno %d", r.errno)
		}
		if structured {
			// Extents that cannot be told are reported as data.
			got, errno := c.blockStatus(3, 3<<20, 4096, 0)
			if errno != 0 || len(got) != 1 || got[0] != (extent{4096, 0}) {
				t.Errorf("block status of a bad range: %v, errno %d", got, errno)
			}
		}
		c.request(0, cmdDisc, 4, 0, 0, nil)
		c.expectClosed()
	}
}

func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, twoExports(), Options{IdleTimeout: 200 * time.Millisecond})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("disk", true, false)
	if r := c.readAt(1, 0, 512, 0); r.errno != 0 {
		t.Fatalf("read: errno %d", r.errno)
	}
	start := time.Now()
	c.expectClosed()
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout", d)
	}
	if e := ts.waitClosed(1)[0]; !errors.Is(e.Err, os.ErrDeadlineExceeded) {
		t.Errorf("idle connection ended with %v", e.Err)
	}
}

func TestTLSOptional(t *testing.T) {
	cfg, _ := testPKI(t)
	ts := startServer(t, twoExports(), Options{TLS: cfg, AllowPlaintext: true})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("small", true, true)
	if r := c.readAt(1, 0, 8192, 0); r.errno != 0 {
		t.Fatalf("plain-text read with TLS optional: errno %d", r.errno)
	}
	c.request(0, cmdDisc, 2, 0, 0, nil)
	c.expectClosed()
}
