package nbd

import (
	"context"
	"testing"
	"time"
)

func TestBudgetSemaphore(t *testing.T) {
	b := newBudget(100)
	ctx := context.Background()
	if n, err := b.acquire(ctx, 60); n != 60 || err != nil {
		t.Fatalf("acquire 60: %d, %v", n, err)
	}
	// Larger than the whole budget: clamped.
	got := make(chan int64, 1)
	go func() {
		n, _ := b.acquire(ctx, 1000)
		got <- n
	}()
	// A waiter that gives up leaves nothing behind.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := b.acquire(cctx, 50); err == nil {
		t.Fatalf("acquire beyond the budget did not wait")
	}
	select {
	case n := <-got:
		t.Fatalf("clamped acquire got %d while 60 were taken", n)
	case <-time.After(20 * time.Millisecond):
	}
	b.release(60)
	if n := <-got; n != 100 {
		t.Fatalf("clamped acquire took %d, want 100", n)
	}
	b.release(100)
	if b.free != 100 || len(b.waiters) != 0 {
		t.Fatalf("free %d, %d waiters", b.free, len(b.waiters))
	}
}

func TestBufPool(t *testing.T) {
	var p bufPool
	for _, n := range []int{1, 4096, 4097, 1 << 20, 3 << 20, 32 << 20} {
		b := p.get(n)
		if len(*b) != n || cap(*b) != poolSize(n) || poolSize(n) < n || poolSize(n) >= 2*n && n > 4096 {
			t.Errorf("get(%d): len %d cap %d poolSize %d", n, len(*b), cap(*b), poolSize(n))
		}
		p.put(b)
	}
}
