package vhdx

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// A VHDX is at least 3 MiB, mostly zeros, so fuzz inputs are a sparse
// encoding: u64 file size, then records {u32 page index, u16 length,
// bytes} that place data on 4 KiB pages; everything else reads as zero.
const fuzzPage = 4096

type sparseFile struct {
	size  int64
	pages map[int64][]byte
}

func decodeSparse(b []byte) *sparseFile {
	f := &sparseFile{pages: map[int64][]byte{}}
	if len(b) < 8 {
		return f
	}
	// At most 128 MiB: a larger claimed file admits a BAT of hundreds of
	// MiB, legitimate but too slow for the fuzzer's minimizer.
	f.size = int64(binary.LittleEndian.Uint64(b) % (128 << 20))
	for b = b[8:]; len(b) >= 6; {
		idx, n := int64(binary.LittleEndian.Uint32(b)), int(binary.LittleEndian.Uint16(b[4:]))
		b = b[6:]
		n = min(n, len(b), fuzzPage)
		p := make([]byte, fuzzPage)
		copy(p, b[:n])
		f.pages[idx] = p
		b = b[n:]
	}
	return f
}

// encodeSparse encodes the non-zero pages of file, the start of a file of
// size bytes.
func encodeSparse(file []byte, size int64) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(size))
	for off := int64(0); off < int64(len(file)); off += fuzzPage {
		p := file[off:min(off+fuzzPage, int64(len(file)))]
		end := len(p)
		for end > 0 && p[end-1] == 0 {
			end--
		}
		if end == 0 {
			continue
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(off/fuzzPage))
		out = binary.LittleEndian.AppendUint16(out, uint16(end))
		out = append(out, p[:end]...)
	}
	return out
}

func (f *sparseFile) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= f.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && off+int64(n) < f.size {
		pos := off + int64(n)
		k := min(len(b)-n, int(fuzzPage-pos%fuzzPage), int(f.size-pos))
		if p, ok := f.pages[pos/fuzzPage]; ok {
			copy(b[n:n+k], p[pos%fuzzPage:])
		} else {
			clear(b[n : n+k])
		}
		n += k
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// sampleSizes are the uncompressed sizes of the platform-made VHDX samples
// (TestReadSamples checks them).
var sampleSizes = map[string]int64{
	"iotest-dynamic-1G.vhdx":      104857600,
	"test-disk2vhd.vhdx":          272630272,
	"iotest-dirtylog-10G-4M.vhdx": 31457280,
}

// samplePrefix returns the first n uncompressed bytes of a sample, or nil.
func samplePrefix(t testing.TB, name string, n int64) []byte {
	f, err := os.Open(filepath.Join("/work/shared/testdata/platform-made", name+".bz2"))
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(bzip2.NewReader(f), n))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func FuzzOpen(f *testing.F) {
	// Only the first 8 MiB of each sample (all its metadata) is
	// uncompressed: the whole files take seconds per fuzz worker.
	for name, size := range sampleSizes {
		if b := samplePrefix(f, name, 8<<20); b != nil {
			f.Add(encodeSparse(b, size))
		}
	}
	for _, c := range []struct {
		size int64
		ext  []formats.Extent
		opts Options
	}{
		{sMiB, nil, Options{}},
		{3 * sMiB, []formats.Extent{{Off: 512, Len: sMiB, Kind: formats.Data}}, Options{BlockSize: sMiB}},
		{64 * sMiB, []formats.Extent{{Off: 0, Len: 4096, Kind: formats.Data}, {Off: 8192, Len: sMiB, Kind: formats.Zero}}, Options{BlockSize: sMiB, LogicalSectorSize: 4096}},
	} {
		l, err := Plan(c.size, c.ext, c.opts)
		if err != nil {
			f.Fatal(err)
		}
		file := make([]byte, l.FileSize())
		var w bytes.Buffer
		if err := formats.StreamLayout(&w, l, synth.New(c.size, c.ext, 1), 1<<16); err != nil {
			f.Fatal(err)
		}
		copy(file, w.Bytes())
		f.Add(encodeSparse(file, int64(len(file))))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// The in-place updater and the fingerprint parse the metadata too.
		synth.FuzzUpdate(b, Open, PlanUpdate, Fingerprint)
		sf := decodeSparse(b)
		img, err := Open(sf, sf.size)
		if err != nil {
			return
		}
		var pos int64
		for i := 0; i < 1000 && pos < img.Size(); i++ {
			e, err := img.Extent(pos)
			if err != nil {
				t.Fatalf("Extent(%d): %v", pos, err)
			}
			if e.Off != pos || e.Len <= 0 || e.End() > img.Size() {
				t.Fatalf("Extent(%d) = %+v", pos, e)
			}
			pos = e.End()
		}
		buf := make([]byte, 64<<10)
		img.ReadAt(buf, 0)
		img.ReadAt(buf, max(0, img.Size()-int64(len(buf))+512))
	})
}
