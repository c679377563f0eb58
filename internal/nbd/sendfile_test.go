package nbd

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

// locImage is testImage as a formats.Locator whose answers come in pieces
// of piece bytes, by piece index k: k%3 == 0 located in a file, k%3 == 1
// not located, k%3 == 2 located in a reader that is not a file. To show
// which bytes went out through sendfile, the file does not hold the image's
// bytes but each of them XOR mark: a client sees mark in exactly the bytes
// the server sent from the file, and the image's own bytes elsewhere.
type locImage struct {
	*synth.Image
	f     *os.File
	mem   *bytes.Reader
	piece int64
}

const mark = 0x5A

func newLocImage(t *testing.T) *locImage {
	img := testImage()
	b := want(img, 0, img.Size())
	marked := bytes.Clone(b)
	for i := range marked {
		marked[i] ^= mark
	}
	p := filepath.Join(t.TempDir(), "marked")
	if err := os.WriteFile(p, marked, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &locImage{Image: img, f: f, mem: bytes.NewReader(b), piece: 12345}
}

func (l *locImage) Locate(off, n int64) (formats.Location, error) {
	k := off / l.piece
	loc := formats.Location{Off: off, Len: min((k+1)*l.piece, off+n) - off}
	switch k % 3 {
	case 0:
		loc.R = l.f
	case 2:
		loc.R = l.mem
	}
	return loc, nil
}

// sent is what a client must receive of [off, off+n) when located file
// pieces go out with sendfile (zeroCopy) or not.
func (l *locImage) sent(off, n int64, zeroCopy bool) []byte {
	b := want(l.Image, off, n)
	if !zeroCopy {
		return b
	}
	ext, _ := formats.Extents(l.Image)
	for _, e := range ext {
		if e.Kind != formats.Data {
			continue
		}
		for i := max(e.Off, off); i < min(e.End(), off+n); i++ {
			if (i/l.piece)%3 == 0 {
				b[i-off] ^= mark
			}
		}
	}
	return b
}

// TestSendFile: the located pieces of a read go out from their file with
// sendfile (on Linux, without TLS), the rest is read through the image, in
// structured (with and without DF) and simple replies; over TLS everything
// is read through the image.
func TestSendFile(t *testing.T) {
	img := newLocImage(t)
	size := img.Size()
	reads := []struct{ off, n int64 }{
		{0, size},                // every kind of run, many pieces
		{100, 5000},              // inside one located piece
		{12000, 40000},           // across pieces of all three kinds
		{60 << 10, 8 << 10},      // data then zero
		{size - 70000, 70000},    // the unaligned tail
		{500 << 10, 1100 << 10},  // hole data hole
		{3 << 20, 1<<20 + 1536},  // the last data run whole
		{2<<20 - 100, 200 << 10}, // hole into zero
	}
	check := func(t *testing.T, c *testClient, structured, zeroCopy bool) {
		for i, r := range reads {
			for _, df := range []uint16{0, cmdFlagDF} {
				if df != 0 && !structured {
					continue
				}
				got := c.readAt(uint64(i+1), uint64(r.off), uint32(r.n), df)
				if got.errno != 0 {
					t.Fatalf("read [%d, +%d) DF %v: errno %d", r.off, r.n, df != 0, got.errno)
				}
				if !bytes.Equal(got.data, img.sent(r.off, r.n, zeroCopy)) {
					t.Errorf("read [%d, +%d) DF %v: not what the server should send (sendfile %v)", r.off, r.n, df != 0, zeroCopy)
				}
			}
		}
	}
	t.Run("structured", func(t *testing.T) {
		ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
		c := newClient(t, dialUnix(t, ts.path))
		c.negotiate("disk", true, false)
		check(t, c, true, canSendFile)
	})
	t.Run("simple", func(t *testing.T) {
		ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
		c := newClient(t, dialUnix(t, ts.path))
		c.negotiate("disk", false, false)
		check(t, c, false, canSendFile)
	})
	t.Run("small requests in flight", func(t *testing.T) {
		ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
		c := newClient(t, dialUnix(t, ts.path))
		c.negotiate("disk", true, false)
		reqs := map[uint64][2]uint64{}
		for h, off := uint64(1), int64(0); off < size; h, off = h+1, off+65536 {
			n := min(65536, size-off)
			c.request(0, cmdRead, h, uint64(off), uint32(n), nil)
			reqs[h] = [2]uint64{uint64(off), uint64(n)}
		}
		res := c.collect(reqs)
		for h, r := range reqs {
			if g := res[h]; g.errno != 0 || !bytes.Equal(g.data, img.sent(int64(r[0]), int64(r[1]), canSendFile)) {
				t.Errorf("read [%d, +%d): errno %d or bytes differ", r[0], r[1], g.errno)
			}
		}
	})
	t.Run("tls", func(t *testing.T) {
		cfg, certs := testPKI(t)
		ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{TLS: cfg})
		nc := dialUnix(t, ts.path)
		c := newClient(t, nc)
		c.greet(3)
		c.sendOpt(optStartTLS, nil)
		c.expectReply(optStartTLS, repAck)
		caPEM, _ := os.ReadFile(filepath.Join(certs, "ca-cert.pem"))
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(caPEM)
		cert, err := tls.LoadX509KeyPair(filepath.Join(certs, "client-cert.pem"), filepath.Join(certs, "client-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(nc, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = newClient(t, tc)
		c.sendOpt(optStructuredRepl, nil)
		c.expectReply(optStructuredRepl, repAck)
		c.sendOpt(optGo, infoData("disk"))
		if _, r := c.infoReplies(optGo); r.typ != repAck {
			t.Fatalf("GO over TLS: %#x", r.typ)
		}
		check(t, c, true, false)
	})
}

// TestSendFileShortFile: a located file that ends before the bytes the
// image promised cannot be sent; the reply is already under way, so the
// server closes the connection (the client sees a short reply, never wrong
// bytes as whole) and says why.
func TestSendFileShortFile(t *testing.T) {
	if !canSendFile {
		t.Skip("no sendfile here")
	}
	img := newLocImage(t)
	if err := os.Truncate(img.f.Name(), 1000); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	c := newClient(t, dialUnix(t, ts.path))
	c.negotiate("disk", true, false)
	c.request(0, cmdRead, 1, 0, 8192, nil)
	c.expectClosed()
	ev := ts.waitClosed(1)
	if ev[0].Err == nil {
		t.Errorf("connection closed without an error: %+v", ev[0])
	}
	ts.mu.Lock()
	logs := strings.Join(ts.logs, "\n")
	ts.mu.Unlock()
	if !strings.Contains(logs, "sending [0, +8192) of the image's file") {
		t.Errorf("log does not say what failed:\n%s", logs)
	}
}
