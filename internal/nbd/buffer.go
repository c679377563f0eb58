package nbd

import (
	"context"
	"math/bits"
	"sync"
)

// budget is a weighted semaphore over bytes of read buffers, shared by all
// connections of a server: a request waits until its buffer fits.
type budget struct {
	total   int64
	mu      sync.Mutex
	free    int64
	waiters []*budgetWaiter // first come, first served
}

type budgetWaiter struct {
	n     int64
	ready chan struct{}
}

func newBudget(n int64) *budget { return &budget{total: n, free: n} }

// acquire takes n bytes, waiting while they are not free, and returns how
// many it took (n, or the whole budget if n is larger) for release; it
// gives up when ctx ends.
func (b *budget) acquire(ctx context.Context, n int64) (int64, error) {
	n = min(n, b.total)
	if n <= 0 {
		return 0, nil
	}
	b.mu.Lock()
	if len(b.waiters) == 0 && b.free >= n {
		b.free -= n
		b.mu.Unlock()
		return n, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return n, nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready:
			// Granted meanwhile: give it back.
			b.free += n
		default:
			for i, x := range b.waiters {
				if x == w {
					b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
					break
				}
			}
		}
		b.wake()
		b.mu.Unlock()
		return 0, ctx.Err()
	}
}

// release returns n bytes.
func (b *budget) release(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.free += n
	b.wake()
	b.mu.Unlock()
}

// wake grants waiters in order while they fit; b.mu is held.
func (b *budget) wake() {
	for len(b.waiters) > 0 && b.free >= b.waiters[0].n {
		w := b.waiters[0]
		b.waiters = b.waiters[1:]
		b.free -= w.n
		close(w.ready)
	}
}

// bufPool recycles read buffers in power-of-two size classes from 4 KiB.
type bufPool struct {
	classes [31]sync.Pool
}

const minBufShift = 12

func class(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// poolSize is the capacity of the buffer get(n) returns.
func poolSize(n int) int {
	if n <= 0 {
		return 0
	}
	return 1 << (class(n) + minBufShift)
}

// get returns a buffer of length n (n ≤ 1 GiB) whose contents are
// undefined.
func (p *bufPool) get(n int) *[]byte {
	c := class(n)
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

func (p *bufPool) put(b *[]byte) {
	if b == nil || cap(*b) == 0 {
		return
	}
	c := class(cap(*b))
	if cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}
