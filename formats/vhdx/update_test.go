package vhdx

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// memAt is a byte slice as an io.ReaderAt.
type memAt []byte

func (m memAt) ReadAt(p []byte, off int64) (int, error) { return bytes.NewReader(m).ReadAt(p, off) }

func TestLogEntryRoundTrip(t *testing.T) {
	const logOff, logLen = mib, mib
	file := make([]byte, 4*mib)
	guid := deriveGUID([16]byte{1}, "LogGuid")
	var ws []logWrite
	for i := range 130 { // more than one descriptor sector (126 fit the first)
		d := make([]byte, logSector)
		for k := range d {
			d[k] = byte(i + k)
		}
		ws = append(ws, logWrite{Off: 3*mib + int64(i)*logSector, Data: d})
	}
	e := marshalLogEntry(ws, 7, guid, 4*mib)
	if descSectors(130) != 2 || len(e) != (2+130)*logSector {
		t.Fatalf("entry of %d bytes for 130 sectors", len(e))
	}
	copy(file[logOff:], e)

	got, last, ok, err := activeLog(memAt(file), logOff, logLen, guid)
	if err != nil || !ok || last != 4*mib || len(got) != len(ws) {
		t.Fatalf("activeLog: %d writes, last %d, ok %v, %v", len(got), last, ok, err)
	}
	for i := range ws {
		if got[i].Off != ws[i].Off || !bytes.Equal(got[i].Data, ws[i].Data) {
			t.Fatalf("write %d differs after the round trip", i)
		}
	}
	// Another GUID: no log.
	if _, _, ok, _ := activeLog(memAt(file), logOff, logLen, deriveGUID([16]byte{2}, "LogGuid")); ok {
		t.Fatal("an entry of another LogGuid was taken")
	}
	// A torn entry (its last data sector missing): no log.
	torn := bytes.Clone(file)
	clear(torn[logOff+len(e)-logSector : logOff+len(e)])
	if _, _, ok, _ := activeLog(memAt(torn), logOff, logLen, guid); ok {
		t.Fatal("a torn entry was taken")
	}
	// A data sector whose sequence number does not match: no log.
	bad := bytes.Clone(file)
	s := logOff + 2*logSector
	binary.LittleEndian.PutUint32(bad[s+4:], 1)
	le := binary.LittleEndian
	le.PutUint32(bad[logOff+leChecksum:], checksum(bad[logOff:logOff+len(e)], leChecksum))
	if _, _, ok, _ := activeLog(memAt(bad), logOff, logLen, guid); ok {
		t.Fatal("an entry with a wrong data sector sequence was taken")
	}
	// Two consecutive entries: the sequence is replayed in order, later
	// writes winning.
	second := []logWrite{{Off: ws[0].Off, Data: bytes.Repeat([]byte{0xAB}, logSector)}}
	e2 := marshalLogEntry(second, 8, guid, 4*mib)
	two := bytes.Clone(file)
	copy(two[logOff+len(e):], e2)
	got, _, ok, _ = activeLog(memAt(two), logOff, logLen, guid)
	if !ok || len(got) != len(ws)+1 {
		t.Fatalf("two entries: %d writes, ok %v", len(got), ok)
	}
	if w := sortWrites(got); !bytes.Equal(w[0].Data, second[0].Data) {
		t.Fatal("the later entry's write did not win")
	}
}

func TestOverlay(t *testing.T) {
	base := bytes.Repeat([]byte{1}, 3*logSector+100)
	o := &overlay{r: memAt(base), base: int64(len(base)), size: 5 * logSector, sec: map[int64][]byte{logSector: bytes.Repeat([]byte{2}, logSector)}}
	p := make([]byte, 5*logSector)
	if n, err := o.ReadAt(p, 0); n != len(p) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	for i, want := range map[int]byte{0: 1, logSector - 1: 1, logSector: 2, 2*logSector - 1: 2, 2 * logSector: 1, 3*logSector + 99: 1, 3*logSector + 100: 0, 5*logSector - 1: 0} {
		if p[i] != want {
			t.Fatalf("byte %d = %d, want %d", i, p[i], want)
		}
	}
	if n, _ := o.ReadAt(make([]byte, 10), 5*logSector-4); n != 4 {
		t.Fatalf("read across the end returned %d bytes", n)
	}
}
