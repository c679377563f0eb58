package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

func fuzzServer(t testing.TB) *Server {
	s, err := NewServer(twoExports(), Options{
		HandshakeTimeout: 2 * time.Second,
		RequestTimeout:   2 * time.Second,
		WriteTimeout:     2 * time.Second,
		MaxRequest:       64 << 10,
		MaxBuffer:        1 << 20,
		MaxInFlight:      4,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runStream feeds in to a server connection as a client would (over
// net.Pipe), discards what the server says, hangs up, and checks that the
// connection's goroutines are gone.
func runStream(t testing.TB, s *Server, in []byte) {
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		s.serveConn(context.Background(), server)
		close(done)
	}()
	drained := make(chan struct{})
	go func() {
		io.Copy(io.Discard, client)
		close(drained)
	}()
	client.Write(in)
	client.Close()
	<-done
	<-drained
	for deadline := time.Now().Add(5 * time.Second); s.Goroutines() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d server goroutines left", s.Goroutines())
		}
		time.Sleep(time.Millisecond)
	}
	s.budget.mu.Lock()
	free := s.budget.free
	s.budget.mu.Unlock()
	if free != s.budget.total {
		t.Fatalf("budget %d of %d after the connection", free, s.budget.total)
	}
}

func opt(o uint32, data []byte) []byte {
	b := []byte("IHAVEOPT")
	b = binary.BigEndian.AppendUint32(b, o)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var flagsFixedNoZeroes = []byte{0, 0, 0, 3}

// FuzzHandshake feeds arbitrary client streams to the option parser.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{})
	f.Add(flagsFixedNoZeroes)
	f.Add(cat(flagsFixedNoZeroes, opt(optList, nil), opt(optAbort, nil)))
	f.Add(cat(flagsFixedNoZeroes, opt(optInfo, infoData("disk", 0, 1, 2, 3)), opt(optGo, infoData("", 3))))
	f.Add(cat(flagsFixedNoZeroes, opt(optStructuredRepl, nil), opt(optListMetaCtx, metaData("disk")),
		opt(optSetMetaCtx, metaData("disk", "base:allocation", "base:")), opt(optGo, infoData("disk"))))
	f.Add(cat([]byte{0, 0, 0, 1}, opt(optExportName, []byte("small"))))
	f.Add(cat(flagsFixedNoZeroes, opt(optStartTLS, nil), opt(999, []byte("x"))))
	f.Add(cat(flagsFixedNoZeroes, opt(optGo, []byte{0, 0, 0, 200, 1})))
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		runStream(t, s, in)
	})
}

// handshakeGo is a client handshake up to the transmission phase with
// structured replies and base:allocation.
func handshakeGo(structured bool) []byte {
	if !structured {
		return cat(flagsFixedNoZeroes, opt(optGo, infoData("disk")))
	}
	return cat(flagsFixedNoZeroes, opt(optStructuredRepl, nil),
		opt(optSetMetaCtx, metaData("disk", "base:allocation")), opt(optGo, infoData("disk")))
}

// FuzzRequests feeds arbitrary request streams to the transmission phase
// (with and without structured replies).
func FuzzRequests(f *testing.F) {
	size := uint64(testImage().Size())
	f.Add(true, []byte{})
	f.Add(true, encodeRequest(0, cmdRead, 1, 0, 4096, nil))
	f.Add(false, encodeRequest(0, cmdRead, 1, 60<<10, 8192, nil))
	f.Add(true, cat(encodeRequest(cmdFlagDF, cmdRead, 1, 0, 65536, nil), encodeRequest(0, cmdDisc, 2, 0, 0, nil)))
	f.Add(true, encodeRequest(cmdFlagReqOne, cmdBlockStatus, 1, 0, 1<<20, nil))
	f.Add(true, encodeRequest(0, cmdBlockStatus, 1, size-512, 512, nil))
	f.Add(false, encodeRequest(0, cmdWrite, 1, 0, 16, make([]byte, 16)))
	f.Add(true, cat(encodeRequest(0, cmdWrite, 1, 0, 100, make([]byte, 50))))
	f.Add(true, cat(encodeRequest(0, cmdTrim, 1, 0, 100, nil), encodeRequest(0, cmdCache, 2, 0, 100, nil),
		encodeRequest(0, cmdFlush, 3, 0, 0, nil), encodeRequest(0, 77, 4, 0, 0, nil)))
	f.Add(false, encodeRequest(0, cmdRead, 1, size-1, 2, nil))
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, structured bool, in []byte) {
		runStream(t, s, append(handshakeGo(structured), in...))
	})
}

// FuzzParseOptions checks the option data decoders: no panic, and what
// they accept re-encodes to the same bytes.
func FuzzParseOptions(f *testing.F) {
	f.Add(infoData("disk", 1, 2, 3))
	f.Add(infoData(""))
	f.Add(metaData("disk", "base:allocation", "base:"))
	f.Add(metaData(""))
	f.Add([]byte{0, 0, 0, 1, 'a', 0, 0, 0, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		if r, err := parseInfoRequest(b); err == nil {
			if enc := infoData(r.name, r.infos...); !bytes.Equal(enc, b) {
				t.Errorf("info request %x decodes to %+v, which encodes to %x", b, r, enc)
			}
		}
		if r, err := parseMetaRequest(b); err == nil {
			if enc := metaData(r.name, r.queries...); !bytes.Equal(enc, b) {
				t.Errorf("meta request %x decodes to %+v, which encodes to %x", b, r, enc)
			}
		}
		if !bytes.Equal(orig, b) {
			t.Errorf("parser modified its input")
		}
	})
}
