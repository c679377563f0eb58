package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

// testImage is a 4 MiB + 1536 byte disk with every kind of run, some
// unaligned to 4 KiB: data, zero, hole, data, hole, zero, data up to the
// end.
func testImage() *synth.Image {
	const K = 1024
	return synth.New(4<<20+1536, []formats.Extent{
		{Off: 0, Len: 64 * K, Kind: formats.Data},
		{Off: 64 * K, Len: 128 * K, Kind: formats.Zero},
		// hole [192K, 512K)
		{Off: 512 * K, Len: 512 + 1024*K, Kind: formats.Data},
		// hole [1536K+512, 2M)
		{Off: 2 << 20, Len: 1 << 20, Kind: formats.Zero},
		{Off: 3 << 20, Len: 1<<20 + 1536, Kind: formats.Data},
	}, 42)
}

// testServer is a server on a Unix socket, stopped (and checked for leaks)
// when the test ends.
type testServer struct {
	t      testing.TB
	s      *Server
	path   string
	cancel context.CancelFunc
	done   chan error

	mu     sync.Mutex
	events []Event
	logs   []string
}

func sockDir(t testing.TB) string {
	// t.TempDir can exceed the 108-byte limit of socket paths.
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startServer(t testing.TB, exports []Export, opts Options) *testServer {
	t.Helper()
	ts := &testServer{t: t, done: make(chan error, 1)}
	opts.Event = func(e Event) {
		ts.mu.Lock()
		ts.events = append(ts.events, e)
		ts.mu.Unlock()
	}
	opts.Logf = func(format string, args ...any) {
		ts.mu.Lock()
		ts.logs = append(ts.logs, fmt.Sprintf(format, args...))
		ts.mu.Unlock()
	}
	s, err := NewServer(exports, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts.s = s
	ts.path = filepath.Join(sockDir(t), "nbd.sock")
	ln, err := ListenUnix(ts.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	baseline := runtime.NumGoroutine()
	go func() { ts.done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		ts.stop()
		checkLeaks(t, s, baseline)
	})
	return ts
}

// stop cancels Serve and waits for it.
func (ts *testServer) stop() {
	ts.t.Helper()
	ts.cancel()
	select {
	case err := <-ts.done:
		if err != nil {
			ts.t.Errorf("Serve: %v", err)
		}
		ts.done <- nil // for a second stop
	case <-time.After(10 * time.Second):
		ts.t.Fatalf("Serve did not return 10 s after cancellation")
	}
}

// settle waits until no connection is left: the only server goroutine is
// Serve's listener watcher and the buffer budget is whole again.
func (ts *testServer) settle() {
	ts.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ts.s.budget.mu.Lock()
		free := ts.s.budget.free
		ts.s.budget.mu.Unlock()
		g, n := ts.s.Goroutines(), ts.s.Conns()
		if g == 1 && n == 0 && free == ts.s.budget.total {
			return
		}
		if time.Now().After(deadline) {
			ts.t.Fatalf("leak: %d server goroutines (want 1), %d connections, budget %d of %d", g, n, free, ts.s.budget.total)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// closedEvents returns the ConnClosed events so far.
func (ts *testServer) closedEvents() []Event {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var out []Event
	for _, e := range ts.events {
		if e.Kind == ConnClosed {
			out = append(out, e)
		}
	}
	return out
}

// waitClosed waits until n connections have closed and returns their
// events.
func (ts *testServer) waitClosed(n int) []Event {
	ts.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev := ts.closedEvents()
		if len(ev) >= n {
			return ev
		}
		if time.Now().After(deadline) {
			ts.t.Fatalf("%d connections closed after 10 s, want %d", len(ev), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkLeaks checks that the server's goroutines are gone, that its
// buffer budget is whole again, and that the process goroutine count
// settles back to where it was.
func checkLeaks(t testing.TB, s *Server, baseline int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, n := s.Goroutines(), runtime.NumGoroutine()
		s.budget.mu.Lock()
		free := s.budget.free
		s.budget.mu.Unlock()
		if g == 0 && n <= baseline && free == s.budget.total && s.Conns() == 0 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("leak: server goroutines %d, conns %d, process goroutines %d (baseline %d), budget %d of %d\n%s",
				g, s.Conns(), n, baseline, free, s.budget.total, buf)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dialUnix(t testing.TB, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// isProto reports whether err wraps ErrProtocol.
func isProto(err error) bool { return errors.Is(err, ErrProtocol) }
