package vhdx

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Update is a planned in-place update of an existing VHDX (see
// PlanUpdate). It has the same shape in every format package:
//
//   - FileSize: the size the file is set to before the first write, 0 to
//     leave it;
//   - Stages: written in order, each followed by a flush; a piece copies
//     Meta, or new virtual-disk bytes [Src, Src+Len), or (Meta nil, Src < 0)
//     writes zeros over whatever the file holds;
//   - PunchZeros: zero pieces may be deallocated instead of written (never
//     for VHDX: Hyper-V refuses sparse files).
type Update struct {
	FileSize   int64
	Stages     [][]formats.Piece
	PunchZeros bool
}

// headers reads both headers of r and returns the current one (the valid
// one with the larger sequence number) and its offset.
func headers(r io.ReaderAt) (*header, int64, error) {
	var cur *header
	var curOff int64
	var firstErr error
	for i, off := range []int64{header1Off, header2Off} {
		name := fmt.Sprintf("header %d", i+1)
		b := make([]byte, headerSize)
		if err := readAt(r, b, off, name); err != nil {
			return nil, 0, err
		}
		h, err := parseHeader(b, name, off)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if cur == nil || h.Seq > cur.Seq {
			cur, curOff = h, off
		}
	}
	if cur == nil {
		return nil, 0, firstErr
	}
	return cur, curOff, nil
}

// otherHeader returns the offset of the header slot that is not at off.
func otherHeader(off int64) int64 {
	if off == header1Off {
		return header2Off
	}
	return header1Off
}

// replayed opens r as it reads once its log (if any) is replayed. It
// returns the image, the view it was read through, the sector writes the
// replay makes (nil when the log is empty) and the current header.
func replayed(r io.ReaderAt, fileSize int64) (*Image, *overlay, []logWrite, *header, int64, error) {
	if fileSize < 3*mib {
		return nil, nil, nil, nil, 0, errf(ErrCorrupt, "file", "", 0, "%d bytes is too small for a VHDX", fileSize)
	}
	cur, curOff, err := headers(r)
	if err != nil {
		return nil, nil, nil, nil, 0, err
	}
	ov := &overlay{r: r, base: fileSize, size: fileSize, sec: map[int64][]byte{}}
	var writes []logWrite
	if cur.Log != (GUID{}) {
		ws, last, ok, err := activeLog(r, int64(cur.LogOffset), int64(cur.LogLength), cur.Log)
		if err != nil {
			return nil, nil, nil, nil, 0, err
		}
		if ok {
			writes = sortWrites(ws)
			for _, w := range writes {
				ov.sec[w.Off] = w.Data
			}
			ov.size = max(ov.size, (last+mib-1)/mib*mib)
		}
		// Read the header as it will be once the log is cleared.
		clean := *cur
		clean.Log = GUID{}
		ov.sec[curOff] = clean.marshal()
	}
	img, err := Open(ov, ov.size)
	if err != nil {
		return nil, nil, nil, nil, 0, err
	}
	return img, ov, writes, cur, curOff, nil
}

// PlanUpdate plans the update of the VHDX r (fileSize bytes) to a disk of
// newSize bytes of which only changes differ from what the file holds:
// sorted, non-overlapping extents within [0, newSize); Data ranges are
// copied from the new disk, Zero and Hole ranges now read as zeros.
//
// Per payload block that a change touches:
//
//   - stored (FULLY_PRESENT): changes written in place, Zero and Hole
//     ranges as zeros; a block that becomes zero as a whole is marked
//     PAYLOAD_BLOCK_ZERO instead (its space is not reused);
//   - not stored, receiving Data: a new block at the end of the file (1 MiB
//     aligned) gets the Data ranges copied from the new disk (the rest
//     reads as zeros: the extended file's new space, or zeros written where
//     the file already reached), then its BAT entry becomes FULLY_PRESENT;
//   - not stored, no Data: nothing (it reads as zero).
//
// Every BAT sector that changes is written through the log (MS-VHDX
// §2.3): data blocks first (flush); then, unless the current header
// already names a log that holds nothing valid, the other header slot with
// sequence+1, a new LogGuid and new File/DataWriteGuids (flush); the log
// entry at the start of the log — one data descriptor per BAT sector,
// sequence number = that header's, CRC-32C over the entry (flush); the BAT
// sectors in place (flush); finally the other header slot again with
// sequence+1 and LogGuid zero (flush). A reader that replays logs (Hyper-V,
// qemu-img check -r all) sees the old or the new BAT after a crash at any
// point; this function replays a pending log itself (its sectors are
// written first) before planning.
//
// GUIDs and sequence numbers are derived from the file's header and the
// changes, and new blocks are placed after everything the (replayed) BAT
// refers to, so an interrupted update re-run plans the same bytes, and a
// repeated one changes no metadata: the update is idempotent. Data written
// in place into stored blocks does not change DataWriteGuid (a complete
// update that allocates or zeroes a block does).
//
// A disk that grew is followed when the BAT region has room for its
// entries (the Virtual Disk Size item and the new ZERO entries go through
// the same log entry); otherwise, for a fixed VHDX, and for a disk that
// shrank, the update is refused with ErrInvalid. Differencing disks are
// refused.
func PlanUpdate(r io.ReaderAt, fileSize, newSize int64, changes []formats.Extent) (*Update, error) {
	img, ov, replay, cur, curOff, err := replayed(r, fileSize)
	if err != nil {
		return nil, err
	}
	ls := img.logicalSector
	rounded := (newSize + ls - 1) / ls * ls
	grow := rounded > img.size
	switch {
	case rounded < img.size:
		return nil, errf(ErrInvalid, "metadata item Virtual Disk Size", "VirtualDiskSize", -1,
			"the disk shrank from %d to %d bytes; an update cannot shrink a VHDX", img.size, newSize)
	case grow && (newSize%ls != 0 || newSize > MaxSize):
		return nil, errf(ErrInvalid, "metadata item Virtual Disk Size", "VirtualDiskSize", -1,
			"the disk grew to %d bytes, not a multiple of the %d-byte logical sector up to 64 TiB", newSize, ls)
	case grow && img.fixed:
		return nil, errf(ErrInvalid, "metadata item File Parameters", "LeaveBlocksAllocated", -1, "a fixed VHDX cannot grow in place")
	}
	if err := checkExtents(newSize, changes); err != nil {
		return nil, err
	}
	bs := img.blockSize
	// The end of everything the file's structures refer to, and the BAT
	// and metadata regions.
	end := int64(cur.LogOffset + uint64(cur.LogLength))
	var batLen, metaOff int64
	for _, off := range []int64{regionTab2Off, regionTab1Off} { // table 1 wins
		b := make([]byte, regionTableSize)
		if err := readAt(ov, b, off, "region table"); err != nil {
			return nil, err
		}
		if rs, err := parseRegionTable(b, "region table", off); err == nil {
			for _, e := range rs {
				end = max(end, int64(e.Off)+int64(e.Len))
				switch e.ID {
				case guidBAT:
					batLen = int64(e.Len)
				case guidMetaRegion:
					metaOff = int64(e.Off)
				}
			}
		}
	}
	for _, v := range img.bat {
		if v&batStateMask == stateFullyPresent {
			end = max(end, int64(v&batOffsetMask)+bs)
		}
	}
	// old is the BAT as it reads, bat as it will; a disk that grows gets
	// ZERO entries for its new blocks, and its size item rewritten — both
	// through the log.
	old := append([]uint64(nil), img.bat...)
	bat := append([]uint64(nil), img.bat...)
	var sizeSector *logWrite
	if grow {
		blocks := (newSize + bs - 1) / bs
		if n := batEntries(blocks, img.ratio); n*8 > batLen {
			return nil, errf(ErrInvalid, "BAT region", "Length", img.batOff,
				"%d bytes hold %d entries; a %d-byte disk needs %d: the VHDX cannot grow in place", batLen, batLen/8, newSize, n)
		}
		for int64(len(bat)) < blocks {
			bat = append(bat, stateZero)
			old = append(old, ^uint64(0)) // always written
		}
		w, err := sizeItem(ov, metaOff, newSize)
		if err != nil {
			return nil, err
		}
		sizeSector = w
	}
	next := (end + mib - 1) / mib * mib

	var data []formats.Piece
	var segs []formats.Extent
	block := int64(-1)
	flush := func() {
		if len(segs) == 0 {
			return
		}
		b := block
		lo, hi := b*bs, min((b+1)*bs, newSize)
		hasData, zero := false, int64(0)
		for _, s := range segs {
			if s.Kind == formats.Data {
				hasData = true
			} else {
				zero += s.Len
			}
		}
		v := bat[b]
		switch {
		case v&batStateMask == stateFullyPresent && !hasData && zero == hi-lo && !img.fixed:
			bat[b] = stateZero
		case v&batStateMask == stateFullyPresent:
			fo := int64(v & batOffsetMask)
			for _, s := range segs {
				p := formats.Piece{Off: fo + s.Off - lo, Len: s.Len, Src: s.Off}
				if s.Kind != formats.Data {
					p.Src = -1
				}
				data = append(data, p)
			}
		case hasData:
			// Only the Data ranges are copied. The rest of the new block
			// reads as the recorded point did there (zeros: the block was
			// not stored): past the file's current end the extended file
			// reads as zeros already; below it — a re-run after a cut,
			// whose earlier plan may have put other bytes there — zeros
			// are written.
			base := next
			zeros := func(from, to int64) { // virtual offsets within the block
				f, t := base+from-lo, min(base+to-lo, fileSize)
				if f < t {
					data = append(data, formats.Piece{Off: f, Len: t - f, Src: -1})
				}
			}
			cur := lo
			for _, sg := range segs {
				zeros(cur, sg.Off)
				if sg.Kind == formats.Data {
					data = append(data, formats.Piece{Off: base + sg.Off - lo, Len: sg.Len, Src: sg.Off})
				} else {
					zeros(sg.Off, sg.Off+sg.Len)
				}
				cur = sg.Off + sg.Len
			}
			zeros(cur, lo+bs)
			bat[b] = uint64(next) | stateFullyPresent
			next += bs
		}
		segs = segs[:0]
	}
	for _, e := range changes {
		for off := e.Off; off < e.End(); {
			b := off / bs
			stop := min(e.End(), (b+1)*bs)
			if b != block {
				flush()
				block = b
			}
			segs = append(segs, formats.Extent{Off: off, Len: stop - off, Kind: e.Kind})
			off = stop
		}
	}
	flush()

	// BAT sectors that change, as they read after the replay.
	var ws []logWrite
	for b := int64(0); b < int64(len(bat)); {
		idx := b + b/img.ratio
		sec := (img.batOff + idx*8) &^ (logSector - 1)
		var buf []byte
		for ; b < int64(len(bat)) && (img.batOff+(b+b/img.ratio)*8)&^(logSector-1) == sec; b++ {
			if bat[b] == old[b] {
				continue
			}
			if buf == nil {
				buf = make([]byte, logSector)
				if err := readAt(ov, buf, sec, "BAT"); err != nil {
					return nil, err
				}
			}
			binary.LittleEndian.PutUint64(buf[img.batOff+(b+b/img.ratio)*8-sec:], bat[b])
		}
		if buf != nil {
			ws = append(ws, logWrite{Off: sec, Data: buf})
		}
	}
	if sizeSector != nil {
		ws = sortWrites(append(ws, *sizeSector))
	}

	u := &Update{}
	if next > ov.size {
		u.FileSize = next
	} else if ov.size > fileSize {
		u.FileSize = ov.size // the replayed log's LastFileOffset
	}
	fileEnd := max(next, ov.size)
	var replayStage []formats.Piece
	for _, w := range replay {
		replayStage = append(replayStage, formats.Piece{Off: w.Off, Len: logSector, Meta: w.Data})
	}
	add := func(st []formats.Piece) {
		if len(st) > 0 {
			u.Stages = append(u.Stages, st)
		}
	}
	add(replayStage)
	add(data)
	h, hOff := *cur, curOff // the header in force
	if len(ws) > 0 {
		if cur.Log == (GUID{}) || replay != nil {
			// Begin: a new LogGuid in the other slot. Everything derives
			// from the current header and the BAT sectors.
			d := sha256.New()
			d.Write(cur.marshal())
			for _, w := range ws {
				d.Write(binary.LittleEndian.AppendUint64(nil, uint64(w.Off)))
				d.Write(w.Data)
			}
			var id [16]byte
			copy(id[:], d.Sum(nil))
			h.Seq = cur.Seq + 1
			h.Log = deriveGUID(id, "LogGuid")
			h.FileWrite = deriveGUID(id, "FileWriteGuid")
			h.DataWrite = deriveGUID(id, "DataWriteGuid")
			hOff = otherHeader(curOff)
			add([]formats.Piece{{Off: hOff, Len: headerSize, Meta: h.marshal()}})
		}
		entry := marshalLogEntry(ws, h.Seq, h.Log, fileEnd)
		if int64(len(entry)) > int64(h.LogLength) {
			return nil, errf(ErrInvalid, "log", "", int64(h.LogOffset), "the update changes %d BAT sectors: a %d-byte log entry does not fit the %d-byte log", len(ws), len(entry), h.LogLength)
		}
		add([]formats.Piece{{Off: int64(h.LogOffset), Len: int64(len(entry)), Meta: entry}})
		var batStage []formats.Piece
		for _, w := range ws {
			batStage = append(batStage, formats.Piece{Off: w.Off, Len: logSector, Meta: w.Data})
		}
		add(batStage)
	}
	if h.Log != (GUID{}) {
		// Clear the log: the other slot, sequence+1, LogGuid zero.
		h.Seq++
		h.Log = GUID{}
		add([]formats.Piece{{Off: otherHeader(hOff), Len: headerSize, Meta: h.marshal()}})
	}
	return u, nil
}

// sizeItem returns the 4 KiB sector of the metadata region at metaOff
// holding the Virtual Disk Size item, with the item set to size.
func sizeItem(r io.ReaderAt, metaOff, size int64) (*logWrite, error) {
	tab := make([]byte, metaTableSize)
	if err := readAt(r, tab, metaOff, "metadata table"); err != nil {
		return nil, err
	}
	entries, err := parseMetaTable(tab, metaOff)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.ID != guidDiskSize {
			continue
		}
		at := metaOff + int64(e.Off)
		sec := at &^ (logSector - 1)
		if e.Len != 8 || at+8 > sec+logSector {
			return nil, errf(ErrUnsupported, "metadata item Virtual Disk Size", "Offset", at, "%d bytes at 0x%x cross a 4 KiB sector", e.Len, at)
		}
		b := make([]byte, logSector)
		if err := readAt(r, b, sec, "metadata region"); err != nil {
			return nil, err
		}
		binary.LittleEndian.PutUint64(b[at-sec:], uint64(size))
		return &logWrite{Off: sec, Data: b}, nil
	}
	return nil, errf(ErrCorrupt, "metadata table", "Virtual Disk Size", metaOff, "item missing")
}

// Fingerprint returns a SHA-256 over the VHDX's metadata: both headers,
// both region tables, the BAT region and the metadata region. Payload
// blocks and the log are not read.
func Fingerprint(r io.ReaderAt, fileSize int64) ([32]byte, error) {
	if _, err := Open(r, fileSize); err != nil {
		return [32]byte{}, err
	}
	h := sha256.New()
	for _, s := range []struct{ off, n int64 }{{header1Off, headerSize}, {header2Off, headerSize}, {regionTab1Off, regionTableSize}, {regionTab2Off, regionTableSize}} {
		b := make([]byte, s.n)
		if err := readAt(r, b, s.off, "header"); err != nil {
			return [32]byte{}, err
		}
		h.Write(b)
	}
	b := make([]byte, regionTableSize)
	if err := readAt(r, b, regionTab1Off, "region table 1"); err != nil {
		return [32]byte{}, err
	}
	rs, err := parseRegionTable(b, "region table 1", regionTab1Off)
	if err != nil {
		if err := readAt(r, b, regionTab2Off, "region table 2"); err != nil {
			return [32]byte{}, err
		}
		if rs, err = parseRegionTable(b, "region table 2", regionTab2Off); err != nil {
			return [32]byte{}, err
		}
	}
	buf := make([]byte, mib)
	for _, e := range rs {
		if e.ID != guidBAT && e.ID != guidMetaRegion {
			continue
		}
		for done := int64(0); done < int64(e.Len); {
			n := min(int64(len(buf)), int64(e.Len)-done)
			if err := readAt(r, buf[:n], int64(e.Off)+done, "region"); err != nil {
				return [32]byte{}, err
			}
			h.Write(buf[:n])
			done += n
		}
	}
	return [32]byte(h.Sum(nil)), nil
}
