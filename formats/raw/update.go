package raw

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Update is a planned in-place update of an existing raw image (see
// PlanUpdate). It has the same shape in every format package:
//
//   - FileSize: the size the file is set to before the first write, 0 to
//     leave it;
//   - Stages: written in order, each followed by a flush; a piece copies
//     Meta, or new virtual-disk bytes [Src, Src+Len), or (Meta nil, Src < 0)
//     writes zeros over whatever the file holds;
//   - PunchZeros: zero pieces may be deallocated instead of written.
type Update struct {
	FileSize   int64
	Stages     [][]formats.Piece
	PunchZeros bool
}

// PlanUpdate plans the update of a raw image of fileSize bytes to a disk
// of newSize bytes of which only changes differ from what the image holds:
// sorted, non-overlapping extents within [0, newSize). Data ranges are
// copied in place; Zero and Hole ranges are zeroed, by punching holes where
// the file system can (PunchZeros). A larger newSize extends the file
// first (the new tail reads as zeros until the changes fill it); a smaller
// one is refused — shrinking a disk is not an update.
//
// Every piece writes final bytes at a fixed place, so the update is
// idempotent and may be re-run after an interruption at any point.
func PlanUpdate(fileSize, newSize int64, changes []formats.Extent) (*Update, error) {
	if newSize < 0 || fileSize < 0 {
		return nil, &Error{What: "size", Off: -1, Msg: fmt.Sprintf("%d bytes (file %d bytes)", newSize, fileSize), Err: ErrInvalid}
	}
	if newSize < fileSize {
		return nil, &Error{What: "size", Off: -1, Msg: fmt.Sprintf("the disk shrank from %d to %d bytes; an update cannot shrink a raw image", fileSize, newSize), Err: ErrInvalid}
	}
	if err := formats.CheckExtents(newSize, changes); err != nil {
		return nil, &Error{What: "change list", Off: -1, Msg: err.Error(), Err: ErrInvalid}
	}
	u := &Update{PunchZeros: true}
	if newSize != fileSize {
		u.FileSize = newSize
	}
	var stage []formats.Piece
	for _, e := range changes {
		p := formats.Piece{Off: e.Off, Len: e.Len, Src: e.Off}
		if e.Kind != formats.Data {
			if e.Off >= fileSize {
				continue // beyond the old end: the extension reads as zeros
			}
			p.Src = -1
			p.Len = min(e.End(), fileSize) - e.Off
		}
		stage = append(stage, p)
	}
	if len(stage) > 0 {
		u.Stages = [][]formats.Piece{stage}
	}
	return u, nil
}

// Fingerprint returns the SHA-256 that identifies a raw image's metadata:
// a raw image has none, so it is the hash of its size alone (the caller
// records size and modification time beside it).
func Fingerprint(fileSize int64) [32]byte {
	var b [8 + 3]byte
	copy(b[:], "raw")
	binary.BigEndian.PutUint64(b[3:], uint64(fileSize))
	return sha256.Sum256(b[:])
}
