package vhd

import (
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Update is a planned in-place update of an existing VHD (see PlanUpdate).
// It has the same shape in every format package:
//
//   - FileSize: the size the file is set to before the first write, 0 to
//     leave it;
//   - Stages: written in order, each followed by a flush; a piece copies
//     Meta, or new virtual-disk bytes [Src, Src+Len), or (Meta nil, Src < 0)
//     writes zeros over whatever the file holds;
//   - PunchZeros: zero pieces may be deallocated instead of written (never
//     for VHD: Hyper-V refuses sparse VHD files).
type Update struct {
	FileSize   int64
	Stages     [][]formats.Piece
	PunchZeros bool
}

// PlanUpdate plans the update of the VHD r (fileSize bytes) to a disk of
// newSize bytes of which only changes differ from what the VHD holds:
// sorted, non-overlapping extents within [0, newSize); Data ranges are
// copied from the new disk, Zero and Hole ranges now read as zeros.
//
// A fixed VHD is updated in place (zeros written). In a dynamic VHD:
//
//   - changes inside allocated blocks are written in place, Data widened to
//     whole sectors; a sector whose bitmap bit was clear gets it set after
//     its data is durable;
//   - a block without storage that receives Data is appended whole (sector
//     bitmap of ones, then all its data read from the new disk) after the
//     end of the last allocated block and the old footer, which stays where
//     it was — the file stays valid through the footer copy at offset 0
//     until the new footer is written at the new end;
//   - Zero and Hole ranges in unallocated blocks need nothing;
//   - the BAT entries of the new blocks are written last, in one write.
//
// Stages: [data and new blocks] → [bitmaps of old blocks, new footer] →
// [BAT]. Where new blocks go depends only on the BAT, which changes in the
// last write, so a run cut short anywhere plans the same writes again, and
// a run after a complete one finds every block allocated and rewrites the
// same bytes in place: the update is idempotent.
//
// The virtual size cannot change: a larger or smaller newSize is refused
// with ErrInvalid (growing within the BAT's Max Table Entries is not
// implemented).
func PlanUpdate(r io.ReaderAt, fileSize, newSize int64, changes []formats.Extent) (*Update, error) {
	m, err := Open(r, fileSize)
	if err != nil {
		return nil, err
	}
	if newSize != m.size && roundUp(newSize, SectorSize) != m.size &&
		!(m.bat == nil && m.size == max(roundUp(newSize, 1<<20), AzureMinSize)) {
		return nil, &Error{Struct: "disk", Field: "size", Off: -1,
			Msg: fmt.Sprintf("the disk is now %d bytes, the VHD holds %d: an update cannot change a VHD's size", newSize, m.size), Err: ErrInvalid}
	}
	if err := formats.CheckExtents(newSize, changes); err != nil {
		return nil, &Error{Struct: "change list", Off: -1, Msg: err.Error(), Err: ErrInvalid}
	}
	u := &Update{}
	if m.bat == nil { // fixed: the disk's bytes are the file's
		var st []formats.Piece
		for _, e := range changes {
			p := formats.Piece{Off: e.Off, Len: e.Len, Src: e.Off}
			if e.Kind != formats.Data {
				p.Src = -1
			}
			st = append(st, p)
		}
		if len(st) > 0 {
			u.Stages = [][]formats.Piece{st}
		}
		return u, nil
	}

	bs, bms := m.blockSize, m.bitmapSize
	// The end of everything the metadata refers to.
	var hdr dynHeader
	var f footer
	if err := readFull(r, f[:], m.info.FooterAt); err != nil {
		return nil, &Error{Struct: "footer", Off: m.info.FooterAt, Msg: err.Error(), Err: ErrCorrupt}
	}
	hOff := int64(be.Uint64(f.dataOffset()))
	if err := readFull(r, hdr[:], hOff); err != nil {
		return nil, &Error{Struct: "dynamic header", Off: hOff, Msg: err.Error(), Err: ErrCorrupt}
	}
	tabOff := int64(be.Uint64(hdr.tableOffset()))
	end := max(hOff+HeaderSize, roundUp(tabOff+4*int64(len(m.bat)), SectorSize))
	for _, e := range m.bat {
		if e != batUnused {
			end = max(end, int64(e)*SectorSize+bms+bs)
		}
	}
	// New blocks: data 4 KiB-aligned, after the old footer at end.
	next := roundUp(end+FooterSize+bms, dataAlign)

	var data, bitmaps []formats.Piece
	bat := append([]uint32(nil), m.bat...)
	firstNew, lastNew := int64(-1), int64(-1)
	for _, e := range changes {
		for off := e.Off; off < e.End(); {
			b := off / bs
			stop := min(e.End(), (b+1)*bs)
			in := off - b*bs
			switch {
			case m.bat[b] != batUnused:
				base := int64(m.bat[b]) * SectorSize
				if e.Kind != formats.Data {
					data = append(data, formats.Piece{Off: base + bms + in, Len: stop - off, Src: -1})
					break
				}
				// Whole sectors, so that a sector whose bit gets set holds
				// no stale bytes.
				lo := in / SectorSize * SectorSize
				hi := min(roundUp(stop-b*bs, SectorSize), bs)
				data = append(data, srcPieces(base+bms+lo, b*bs+lo, hi-lo, newSize)...)
				bm, err := sectorBits(r, m, b, lo, hi)
				if err != nil {
					return nil, err
				}
				if bm != nil {
					bitmaps = append(bitmaps, formats.Piece{Off: base, Len: int64(len(bm)), Meta: bm})
				}
			case bat[b] != batUnused:
				// appended by an earlier change of this update, whole
			case e.Kind == formats.Data:
				if next/SectorSize-1 > batUnused-1 {
					return nil, &Error{Struct: "BAT", Field: fmt.Sprintf("entry %d", b), Off: tabOff + 4*b,
						Msg: fmt.Sprintf("block at file offset %d is beyond what a BAT entry can address", next), Err: ErrTooLarge}
				}
				bat[b] = uint32((next - bms) / SectorSize)
				ones := make([]byte, bms)
				for i := range ones {
					ones[i] = 0xFF
				}
				data = append(data, formats.Piece{Off: next - bms, Len: bms, Meta: ones})
				data = append(data, srcPieces(next, b*bs, bs, newSize)...)
				if firstNew < 0 {
					firstNew = b
				}
				lastNew = b
				next = roundUp(next+bs+bms, dataAlign)
			}
			off = stop
		}
	}
	var stages [][]formats.Piece
	if len(data) > 0 {
		stages = append(stages, data)
	}
	second := bitmaps
	if firstNew >= 0 {
		newEnd := lastBlockEnd(bat, bs, bms)
		u.FileSize = newEnd + FooterSize
		second = append(second, formats.Piece{Off: newEnd, Len: FooterSize, Meta: append([]byte(nil), f[:]...)})
	}
	if len(second) > 0 {
		stages = append(stages, second)
	}
	if firstNew >= 0 {
		lo := (tabOff + 4*firstNew) / SectorSize * SectorSize
		hi := min(roundUp(tabOff+4*lastNew+4, SectorSize), roundUp(tabOff+4*int64(len(bat)), SectorSize))
		span := make([]byte, hi-lo)
		if err := readFull(r, span, lo); err != nil {
			return nil, &Error{Struct: "BAT", Off: lo, Msg: err.Error(), Err: ErrCorrupt}
		}
		for b := firstNew; b <= lastNew; b++ {
			if bat[b] != m.bat[b] {
				be.PutUint32(span[tabOff+4*b-lo:], bat[b])
			}
		}
		stages = append(stages, []formats.Piece{{Off: lo, Len: int64(len(span)), Meta: span}})
	}
	u.Stages = stages
	return u, nil
}

// lastBlockEnd returns the end of the last allocated block's data.
func lastBlockEnd(bat []uint32, bs, bms int64) int64 {
	var end int64
	for _, e := range bat {
		if e != batUnused {
			end = max(end, int64(e)*SectorSize+bms+bs)
		}
	}
	return end
}

// srcPieces copies virtual bytes [src, src+n) to file offset off; what lies
// beyond the disk's end (the padding of its last block) is written as
// zeros.
func srcPieces(off, src, n, size int64) []formats.Piece {
	k := max(0, min(n, size-src))
	var ps []formats.Piece
	if k > 0 {
		ps = append(ps, formats.Piece{Off: off, Len: k, Src: src})
	}
	if k < n {
		ps = append(ps, formats.Piece{Off: off + k, Len: n - k, Src: -1})
	}
	return ps
}

// sectorBits returns block b's sector bitmap with the sectors of block
// offsets [lo, hi) set, or nil when they are all set already.
func sectorBits(r io.ReaderAt, m *Image, b, lo, hi int64) ([]byte, error) {
	bm := make([]byte, m.bitmapSize)
	base := int64(m.bat[b]) * SectorSize
	if err := readFull(r, bm, base); err != nil {
		return nil, &Error{Struct: "block bitmap", Field: fmt.Sprintf("block %d", b), Off: base, Msg: err.Error(), Err: ErrCorrupt}
	}
	changed := false
	for s := lo / SectorSize; s < hi/SectorSize; s++ {
		if !bit(bm, s) {
			bm[s/8] |= 0x80 >> (s % 8)
			changed = true
		}
	}
	if !changed {
		return nil, nil
	}
	return bm, nil
}

// Fingerprint returns a SHA-256 over the VHD's metadata — the footer in
// use, and for a dynamic disk the dynamic header and the BAT — so that a
// caller can tell whether the file's structure changed since it was
// recorded. Data blocks are not read.
func Fingerprint(r io.ReaderAt, fileSize int64) ([32]byte, error) {
	m, err := Open(r, fileSize)
	if err != nil {
		return [32]byte{}, err
	}
	h := sha256.New()
	var f footer
	if err := readFull(r, f[:], m.info.FooterAt); err != nil {
		return [32]byte{}, &Error{Struct: "footer", Off: m.info.FooterAt, Msg: err.Error(), Err: ErrCorrupt}
	}
	h.Write(f[:])
	if m.bat != nil {
		var hdr dynHeader
		hOff := int64(be.Uint64(f.dataOffset()))
		if err := readFull(r, hdr[:], hOff); err != nil {
			return [32]byte{}, &Error{Struct: "dynamic header", Off: hOff, Msg: err.Error(), Err: ErrCorrupt}
		}
		h.Write(hdr[:])
		for _, e := range m.bat {
			h.Write(be.AppendUint32(nil, e))
		}
	}
	return [32]byte(h.Sum(nil)), nil
}
