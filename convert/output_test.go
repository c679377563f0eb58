package convert

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestOutput writes more than flushEvery (so early writeback runs) out of
// order, commits, and checks the bytes, the final name, that no temporary
// file is left and that the flusher goroutine has ended; then Abort and the
// refusal to replace an existing file.
func TestOutput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.raw")
	before := runtime.NumGoroutine()
	o, err := CreateOutput(path, false)
	if err != nil {
		t.Fatal(err)
	}
	const size = 3*flushEvery + 12345
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i*31 + i>>13)
	}
	const piece = 256 << 10
	for off := int64(size/piece) * piece; off >= 0; off -= piece { // backwards
		end := min(off+piece, size)
		if n, err := o.WriteAt(want[off:end], off); err != nil || n != int(end-off) {
			t.Fatalf("WriteAt(%d): %d, %v", off, n, err)
		}
	}
	if err := o.Commit(size); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("committed file differs (%v)", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries after Commit, want 1", len(ents))
	}
	o.Abort() // no-op after Commit
	if _, err := os.Stat(path); err != nil {
		t.Errorf("Abort after Commit removed the output: %v", err)
	}

	if _, err := CreateOutput(path, false); !errors.Is(err, ErrExists) {
		t.Errorf("CreateOutput over an existing file: %v, want ErrExists", err)
	}
	o, err = CreateOutput(filepath.Join(dir, "aborted.raw"), false)
	if err != nil {
		t.Fatal(err)
	}
	o.WriteAt(want[:flushEvery+1], 0)
	o.Abort()
	o.Abort()
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries after Abort, want 1", len(ents))
	}
	// The flusher goroutines are gone.
	for deadline := time.Now().Add(2 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before", runtime.NumGoroutine(), before)
		}
	}
}
