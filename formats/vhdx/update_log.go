package vhdx

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// The VHDX log (MS-VHDX §2.3): a circular buffer of 4 KiB sectors at the
// header's LogOffset. An entry is
//
//	header + descriptors   ⌈(descriptors+2)/128⌉ sectors: the 64-byte
//	                       entry header, then 32-byte descriptors
//	data sectors           one per data descriptor
//
// Entry header (little-endian):
//
//	0 Signature "loge"   4 Checksum (CRC-32C over the whole entry, field
//	zeroed)   8 EntryLength   12 Tail (log offset of the sequence's first
//	entry)   16 SequenceNumber u64   24 DescriptorCount   28 Reserved
//	32 LogGuid (must equal the header's)   48 FlushedFileOffset u64
//	56 LastFileOffset u64
//
// Data descriptor: 0 "desc"  4 TrailingBytes (last 4 bytes of the sector)
// 8 LeadingBytes (first 8)  16 FileOffset u64 (4 KiB-aligned)
// 24 SequenceNumber u64. Zero descriptor: 0 "zero"  4 Reserved
// 8 ZeroLength u64  16 FileOffset  24 SequenceNumber.
// Data sector: 0 "data"  4 SequenceHigh  8 the sector's bytes 8…4091
// 4092 SequenceLow.
const (
	logSector     = 4096
	logEntryHdr   = 64
	logDescSize   = 32
	logDataBytes  = 4084
	leChecksum    = 4
	leLength      = 8
	leTail        = 12
	leSeq         = 16
	leDescCount   = 24
	leGUID        = 32
	leFlushedOff  = 48
	leLastFileOff = 56
)

var (
	sigLogEntry = [4]byte{'l', 'o', 'g', 'e'}
	sigDesc     = [4]byte{'d', 'e', 's', 'c'}
	sigZero     = [4]byte{'z', 'e', 'r', 'o'}
	sigData     = [4]byte{'d', 'a', 't', 'a'}
)

// descSectors is the number of sectors holding the entry header and n
// descriptors.
func descSectors(n int) int { return (n + 2 + 127) / 128 }

// logWrite is one 4 KiB sector of metadata to be written through the log.
type logWrite struct {
	Off  int64 // file offset, 4 KiB-aligned
	Data []byte
}

// marshalLogEntry returns the log entry that writes ws (sorted by offset)
// with sequence number seq under guid; fileSize is recorded as both the
// flushed and the last file offset.
func marshalLogEntry(ws []logWrite, seq uint64, guid GUID, fileSize int64) []byte {
	ds := descSectors(len(ws))
	b := make([]byte, (ds+len(ws))*logSector)
	le := binary.LittleEndian
	copy(b, sigLogEntry[:])
	le.PutUint32(b[leLength:], uint32(len(b)))
	le.PutUint32(b[leTail:], 0)
	le.PutUint64(b[leSeq:], seq)
	le.PutUint32(b[leDescCount:], uint32(len(ws)))
	copy(b[leGUID:], guid[:])
	le.PutUint64(b[leFlushedOff:], uint64(fileSize))
	le.PutUint64(b[leLastFileOff:], uint64(fileSize))
	for i, w := range ws {
		d := b[logEntryHdr+i*logDescSize:]
		copy(d, sigDesc[:])
		copy(d[4:8], w.Data[logSector-4:])
		copy(d[8:16], w.Data[:8])
		le.PutUint64(d[16:], uint64(w.Off))
		le.PutUint64(d[24:], seq)
		s := b[(ds+i)*logSector:]
		copy(s, sigData[:])
		le.PutUint32(s[4:], uint32(seq>>32))
		copy(s[8:8+logDataBytes], w.Data[8:8+logDataBytes])
		le.PutUint32(s[logSector-4:], uint32(seq))
	}
	le.PutUint32(b[leChecksum:], checksum(b, leChecksum))
	return b
}

// logEntry is a valid entry found in the log.
type logEntry struct {
	at     int64 // offset in the log
	length int64
	seq    uint64
	last   int64 // LastFileOffset
	writes []logWrite
	zeros  []logWrite // Data nil; Off and a length in zeroLen
	zlen   []int64
}

// parseLogEntry validates the entry at log offset at (the log is the
// logLen bytes at logOff of r) under guid; it returns nil when there is no
// valid entry there.
func parseLogEntry(r io.ReaderAt, logOff, logLen, at int64, guid GUID) *logEntry {
	hdr := make([]byte, logSector)
	if readAt(r, hdr, logOff+at, "log") != nil || [4]byte(hdr[:4]) != sigLogEntry {
		return nil
	}
	le := binary.LittleEndian
	length := int64(le.Uint32(hdr[leLength:]))
	n := int(le.Uint32(hdr[leDescCount:]))
	seq := le.Uint64(hdr[leSeq:])
	if length == 0 || length%logSector != 0 || length > logLen || seq == 0 || GUID(hdr[leGUID:]) != guid ||
		int64(descSectors(n))*logSector > length {
		return nil
	}
	// Read the whole entry, wrapping around the end of the log.
	b := make([]byte, length)
	for k := int64(0); k < length; k += logSector {
		if readAt(r, b[k:k+logSector], logOff+(at+k)%logLen, "log") != nil {
			return nil
		}
	}
	if le.Uint32(b[leChecksum:]) != checksum(b, leChecksum) {
		return nil
	}
	e := &logEntry{at: at, length: length, seq: seq, last: int64(le.Uint64(b[leLastFileOff:]))}
	data := int64(descSectors(n)) * logSector
	for i := range n {
		d := b[logEntryHdr+i*logDescSize:]
		off := int64(le.Uint64(d[16:]))
		if le.Uint64(d[24:]) != seq || off%logSector != 0 {
			return nil
		}
		switch [4]byte(d[:4]) {
		case sigDesc:
			if data+logSector > length {
				return nil
			}
			s := b[data : data+logSector]
			data += logSector
			if [4]byte(s[:4]) != sigData || uint64(le.Uint32(s[4:]))<<32|uint64(le.Uint32(s[logSector-4:])) != seq {
				return nil
			}
			w := make([]byte, logSector)
			copy(w[:8], d[8:16])
			copy(w[8:8+logDataBytes], s[8:8+logDataBytes])
			copy(w[logSector-4:], d[4:8])
			e.writes = append(e.writes, logWrite{Off: off, Data: w})
		case sigZero:
			zl := int64(le.Uint64(d[8:]))
			if zl%logSector != 0 {
				return nil
			}
			e.zeros = append(e.zeros, logWrite{Off: off})
			e.zlen = append(e.zlen, zl)
		default:
			return nil
		}
	}
	return e
}

// activeLog finds the active sequence of the log under guid: the run of
// valid entries with consecutive sequence numbers whose last sequence
// number is highest (MS-VHDX §2.3.3). It returns the sector writes to
// replay, in order (later writes win), and the largest LastFileOffset; ok
// is false when the log holds no valid entry.
func activeLog(r io.ReaderAt, logOff, logLen int64, guid GUID) (writes []logWrite, last int64, ok bool, err error) {
	if logLen <= 0 || logLen%mib != 0 {
		return nil, 0, false, errf(ErrCorrupt, "header", "LogLength", header1Off, "%d is not a positive multiple of 1 MiB", logLen)
	}
	found := map[int64]*logEntry{}
	for at := int64(0); at < logLen; at += logSector {
		if e := parseLogEntry(r, logOff, logLen, at, guid); e != nil {
			found[at] = e
		}
	}
	var best []*logEntry
	for _, e := range found {
		seqn := []*logEntry{e}
		for cur := e; ; {
			nx, ok := found[(cur.at+cur.length)%logLen]
			if !ok || nx.seq != cur.seq+1 || len(seqn) > len(found) {
				break
			}
			seqn = append(seqn, nx)
			cur = nx
		}
		if best == nil || seqn[len(seqn)-1].seq > best[len(best)-1].seq ||
			(seqn[len(seqn)-1].seq == best[len(best)-1].seq && len(seqn) > len(best)) {
			best = seqn
		}
	}
	if best == nil {
		return nil, 0, false, nil
	}
	for _, e := range best {
		writes = append(writes, e.writes...)
		for i, z := range e.zeros {
			for k := int64(0); k < e.zlen[i]; k += logSector {
				writes = append(writes, logWrite{Off: z.Off + k, Data: make([]byte, logSector)})
			}
		}
		last = max(last, e.last)
	}
	return writes, last, true, nil
}

// overlay is a file as it reads after replaying a log: 4 KiB sectors
// replaced, and zeros past the end of the base file up to size.
type overlay struct {
	r    io.ReaderAt
	base int64 // size of r
	size int64
	sec  map[int64][]byte
}

func (o *overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vhdx: read at negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= o.size {
			return n, io.EOF
		}
		s := pos &^ (logSector - 1)
		k := min(int64(len(p)-n), s+logSector-pos, o.size-pos)
		dst := p[n : n+int(k)]
		switch {
		case o.sec[s] != nil:
			copy(dst, o.sec[s][pos-s:])
		case pos >= o.base:
			clear(dst)
		default:
			m := min(k, o.base-pos)
			if err := readAt(o.r, dst[:m], pos, "file"); err != nil {
				return n, err
			}
			clear(dst[m:])
		}
		n += int(k)
	}
	return n, nil
}

// sortWrites sorts sector writes by offset, keeping the last write of each
// sector.
func sortWrites(ws []logWrite) []logWrite {
	last := map[int64][]byte{}
	for _, w := range ws {
		last[w.Off] = w.Data
	}
	out := make([]logWrite, 0, len(last))
	for off, d := range last {
		out = append(out, logWrite{Off: off, Data: d})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Off < out[b].Off })
	return out
}
