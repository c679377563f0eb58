package device

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device/devicetest"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestAlignedIOTest(t *testing.T) {
	for _, ss := range []int64{512, 4096} {
		for _, cache := range []int64{0, 64 << 10} {
			t.Run(fmt.Sprintf("sector%d/cache%d", ss, cache), func(t *testing.T) {
				data := randomBytes(int(3*ss+123), uint64(ss))
				// A file size that is not a multiple of the sector: the
				// last sector reads short.
				dev := &devicetest.Strict{R: bytes.NewReader(data), Sector: ss}
				a, err := NewAligned(dev, int64(len(data)), int(ss), cache)
				if err != nil {
					t.Fatal(err)
				}
				if err := iotest.TestReader(io.NewSectionReader(a, 0, int64(len(data))), data); err != nil {
					t.Error(err)
				}
				if n := dev.Bad.Load(); n != 0 {
					t.Errorf("%d unaligned reads reached the device", n)
				}
			})
		}
	}
}

// Random reads of every size, offset and buffer address agree with a
// plain reader, from several goroutines at once, and never reach the
// device unaligned.
func TestAlignedRandomReads(t *testing.T) {
	for _, ss := range []int64{512, 4096} {
		t.Run(fmt.Sprintf("sector%d", ss), func(t *testing.T) {
			t.Parallel()
			const size = 4<<20 + 8192
			data := randomBytes(size, 7)
			dev := &devicetest.Strict{R: bytes.NewReader(data), Sector: ss}
			a, err := NewAligned(dev, size, int(ss), 32<<10)
			if err != nil {
				t.Fatal(err)
			}
			plain := bytes.NewReader(data)
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(g), uint64(ss)))
					buf := make([]byte, 3<<20+ss)
					want := make([]byte, len(buf))
					for range 300 {
						var n int
						switch r.IntN(4) {
						case 0:
							n = r.IntN(16) // tiny
						case 1:
							n = r.IntN(CacheMax + 1) // cached path
						case 2:
							n = int(ss) * (1 + r.IntN(600)) // sector multiples
						default:
							n = r.IntN(3 << 20) // large, unaligned
						}
						off := r.Int64N(size + 100)
						if r.IntN(3) == 0 {
							off &^= ss - 1
						}
						shift := 0
						if r.IntN(2) == 0 {
							shift = r.IntN(int(ss))
						}
						p := buf[shift : shift+n]
						got, gerr := a.ReadAt(p, off)
						w, werr := plain.ReadAt(want[:n], off)
						if got != w || !bytes.Equal(p[:got], want[:w]) || (gerr == nil) != (werr == nil) {
							t.Errorf("ReadAt(%d bytes at %d, shift %d) = %d, %v; plain reader %d, %v", n, off, shift, got, gerr, w, werr)
							return
						}
					}
				}()
			}
			wg.Wait()
			if n := dev.Bad.Load(); n != 0 {
				t.Errorf("%d unaligned reads reached the device", n)
			}
		})
	}
}

// Aligned reads into aligned buffers reach the device as they are (one
// device read, no copy); a large unaligned read at an aligned buffer
// address reads its middle in one piece.
func TestAlignedPassThrough(t *testing.T) {
	const ss = 4096
	data := randomBytes(8<<20, 3)
	dev := &devicetest.Strict{R: bytes.NewReader(data), Sector: ss}
	a, _ := NewAligned(dev, int64(len(data)), ss, 1<<20)
	buf := alignedBuf(2<<20, ss)
	if _, err := a.ReadAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if n := dev.Reads.Load(); n != 1 {
		t.Errorf("aligned 2 MiB read: %d device reads, want 1", n)
	}
	if !bytes.Equal(buf, data[1<<20:3<<20]) {
		t.Error("aligned read: wrong data")
	}
	// Unaligned offset and length, buffer aligned at the first whole
	// sector: head bounce, middle direct, tail bounce.
	dev.Reads.Store(0)
	p := alignedBuf(2<<20+ss, ss)[ss-100 : ss-100+2<<20+50]
	if _, err := a.ReadAt(p, 1<<20-100); err != nil {
		t.Fatal(err)
	}
	if n := dev.Reads.Load(); n != 3 {
		t.Errorf("unaligned large read: %d device reads, want 3 (head, middle, tail)", n)
	}
	if !bytes.Equal(p, data[1<<20-100:1<<20-100+len(p)]) {
		t.Error("unaligned large read: wrong data")
	}
}

// Small reads of the same metadata come from the cache, which stays
// within its bound.
func TestAlignedCache(t *testing.T) {
	const ss = 512
	data := randomBytes(1<<20, 5)
	dev := &devicetest.Strict{R: bytes.NewReader(data), Sector: ss}
	a, _ := NewAligned(dev, int64(len(data)), ss, 16<<10) // 4 lines of 4 KiB
	var b [4]byte
	for range 10 {
		if _, err := a.ReadAt(b[:], 0x1234); err != nil {
			t.Fatal(err)
		}
	}
	if n := dev.Reads.Load(); n != 1 {
		t.Errorf("10 reads of one header: %d device reads, want 1", n)
	}
	for i := range int64(100) {
		a.ReadAt(b[:], i*8192+3)
	}
	if n := a.cache.ll.Len(); n > 4 {
		t.Errorf("cache holds %d lines, bound 4", n)
	}
}

func TestAlignedEdges(t *testing.T) {
	data := randomBytes(10000, 9)
	dev := &devicetest.Strict{R: bytes.NewReader(data), Sector: 512}
	a, _ := NewAligned(dev, int64(len(data)), 512, 0)
	p := make([]byte, 100)
	if n, err := a.ReadAt(p, 9950); n != 50 || err != io.EOF || !bytes.Equal(p[:50], data[9950:]) {
		t.Errorf("read across the end: %d, %v", n, err)
	}
	if n, err := a.ReadAt(p, 10000); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v", n, err)
	}
	if _, err := a.ReadAt(p, -1); err == nil {
		t.Error("negative offset: no error")
	}
	for _, ss := range []int{0, 100, 3000, 1 << 20} {
		if _, err := NewAligned(dev, 1, ss, 0); err == nil {
			t.Errorf("sector size %d accepted", ss)
		}
	}
	// A device error is returned, not hidden.
	bad := &devicetest.Strict{R: bytes.NewReader(data), Sector: 4096}
	a2, _ := NewAligned(bad, int64(len(data)), 512, 0) // wrong sector size: reads fail
	if _, err := a2.ReadAt(p, 100); !errors.Is(err, devicetest.ErrUnaligned) {
		t.Errorf("device error: got %v", err)
	}
}
