package convert

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats/qcow2"
	"github.com/vmfs2vhd/vmfs2vhd/formats/raw"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhd"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhdx"
)

// A provenance record says where an output came from, so that a later
// `convert --update` can bring it up to date by writing only what changed
// since. It is stored beside the output as OUTPUT.vmfs2vhd.json
// (SidecarPath), schema 1:
//
//	{
//	  "schema": 1,                       // this layout; readers refuse others
//	  "tool": "vmfs2vhd",
//	  "tool_version": "v0.9.0",           // of the last writer
//	  "state": "complete",               // or "update in progress"
//	  "created": "2026-12-05T20:50:00Z", // RFC 3339, UTC
//	  "updated": "2026-12-05T21:10:00Z",
//	  "source": {
//	    "volume_uuid": "5f1e…",           // VMFS volume UUID as vmfs prints it
//	    "disk": "vm1/vm1.vmdk",          // descriptor path on the volume
//	    "chain": [                       // base first, up to the converted point
//	      {"file": "vm1/vm1.vmdk", "cid": "fffffffe", "parent_cid": "ffffffff", "size": 4294967296},
//	      {"file": "vm1/vm1-000001.vmdk", "cid": "1a2b3c4d", "parent_cid": "fffffffe", "size": 16777216}
//	    ]
//	  },
//	  "update_target": [ … ],             // only in "update in progress": the chain being applied
//	  "output": {
//	    "format": "qcow2",               // raw | vhd | vhdx | qcow2
//	    "options": {"compat": "1.1"},    // writer options as the CLI names them
//	    "virtual_size": 4294967296,
//	    "fingerprint": {"size": 123456, "mtime": "2026-12-05T21:10:00.123456789Z",
//	                    "metadata_sha256": "9f86d0…"}
//	  }
//	}
//
// cid and parentCID are the descriptor's 32-bit content ids as 8 hex
// digits; size is what the CLI measures of the layer (its extent files'
// bytes), enough to notice a layer that was written to. The fingerprint is
// that of the output after the last complete write (see OutputFingerprint).
type Record struct {
	Schema       int          `json:"schema"`
	Tool         string       `json:"tool"`
	ToolVersion  string       `json:"tool_version"`
	State        string       `json:"state"`
	Created      time.Time    `json:"created"`
	Updated      time.Time    `json:"updated"`
	Source       Source       `json:"source"`
	UpdateTarget []Layer      `json:"update_target,omitempty"`
	Output       RecordOutput `json:"output"`
}

// Record states.
const (
	StateComplete         = "complete"
	StateUpdateInProgress = "update in progress"
)

// RecordSchema is the schema number Save writes and Load accepts.
const RecordSchema = 1

// Source identifies the converted disk and the chain point it was read at.
type Source struct {
	VolumeUUID string  `json:"volume_uuid"`
	Disk       string  `json:"disk"`
	Chain      []Layer `json:"chain"`
}

// Layer is one disk of a snapshot chain.
type Layer struct {
	File      string `json:"file"`
	CID       CID    `json:"cid"`
	ParentCID CID    `json:"parent_cid"`
	Size      int64  `json:"size"`
}

// CID is a VMDK content id, written as 8 hex digits.
type CID uint32

func (c CID) MarshalText() ([]byte, error) { return fmt.Appendf(nil, "%08x", uint32(c)), nil }

func (c *CID) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 16, 32)
	if err != nil || len(b) != 8 {
		return fmt.Errorf("convert: CID %q is not 8 hex digits", b)
	}
	*c = CID(v)
	return nil
}

// RecordOutput describes the output file.
type RecordOutput struct {
	Format      string            `json:"format"`
	Options     map[string]string `json:"options,omitempty"`
	VirtualSize int64             `json:"virtual_size"`
	Fingerprint Fingerprint       `json:"fingerprint"`
}

// Fingerprint identifies an output file's state: its size, modification
// time and a SHA-256 over its metadata only (raw: its size; VHD: footer,
// dynamic header, BAT; VHDX: headers, region tables, BAT and metadata
// regions; qcow2: header cluster, L1 and L2 tables, refcount table and
// blocks).
type Fingerprint struct {
	Size     int64     `json:"size"`
	ModTime  time.Time `json:"mtime"`
	Metadata string    `json:"metadata_sha256"`
}

// SidecarPath returns where the record of output is kept.
func SidecarPath(output string) string { return output + ".vmfs2vhd.json" }

// OutputFingerprint computes the fingerprint of the output at path in
// format ("raw", "vhd", "vhdx" or "qcow2").
func OutputFingerprint(path, format string) (Fingerprint, error) {
	f, err := os.Open(path)
	if err != nil {
		return Fingerprint{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Fingerprint{}, err
	}
	var sum [32]byte
	switch format {
	case "raw":
		sum = raw.Fingerprint(fi.Size())
	case "vhd":
		sum, err = vhd.Fingerprint(f, fi.Size())
	case "vhdx":
		sum, err = vhdx.Fingerprint(f, fi.Size())
	case "qcow2":
		sum, err = qcow2.Fingerprint(f, fi.Size())
	default:
		return Fingerprint{}, fmt.Errorf("convert: %q: %w", format, ErrUpdateFormat)
	}
	if err != nil {
		return Fingerprint{}, err
	}
	return Fingerprint{Size: fi.Size(), ModTime: fi.ModTime().UTC(), Metadata: hex.EncodeToString(sum[:])}, nil
}

// LoadRecord reads the record at path (SidecarPath of the output). A
// missing file is a *RefusalError with reason RefuseNoRecord.
// maxRecordSize bounds what LoadRecord reads.
const maxRecordSize = 1 << 20

func LoadRecord(path string) (*Record, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &RefusalError{Reason: RefuseNoRecord, Layer: -1, Detail: fmt.Sprintf("%s does not exist: the output was not made by vmfs2vhd or its record was removed", path)}
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// A record is a few KiB (a chain has at most a few dozen layers); a
	// larger file is not one of ours.
	b, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxRecordSize {
		return nil, fmt.Errorf("convert: record %s: over %d bytes, not a vmfs2vhd record", path, maxRecordSize)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("convert: record %s: %w", path, err)
	}
	if r.Schema != RecordSchema {
		return nil, fmt.Errorf("convert: record %s: schema %d, this version reads %d", path, r.Schema, RecordSchema)
	}
	if r.State != StateComplete && r.State != StateUpdateInProgress {
		return nil, fmt.Errorf("convert: record %s: unknown state %q", path, r.State)
	}
	return &r, nil
}

// SaveRecord writes r to path atomically: a temporary file in the same
// directory, written and fsynced, renamed over path, and the directory
// fsynced — a crash leaves the old record or the new one, never a mix.
func SaveRecord(path string, r *Record) error {
	if r.Schema == 0 {
		r.Schema = RecordSchema
	}
	if r.Tool == "" {
		r.Tool = "vmfs2vhd"
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := f.Write(b); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// RefusalReason names why an output cannot be updated.
type RefusalReason string

// The reasons CheckUpdate and LoadRecord give.
const (
	RefuseNoRecord       RefusalReason = "no record"
	RefuseOutputChanged  RefusalReason = "output changed"
	RefuseOtherSource    RefusalReason = "other source"
	RefuseChainRewritten RefusalReason = "chain rewritten"
	RefuseCIDMismatch    RefusalReason = "CID mismatch"
	RefuseNotAncestor    RefusalReason = "not an ancestor"
)

// ErrUpdateRefused is what every *RefusalError matches with errors.Is.
var ErrUpdateRefused = errors.New("update refused")

// RefusalError says why an output cannot be updated from a new chain
// point. Layer is the index (base = 0) of the chain layer concerned, or -1.
type RefusalError struct {
	Reason RefusalReason
	Layer  int
	Detail string
}

func (e *RefusalError) Error() string {
	s := "convert: update refused: " + string(e.Reason)
	if e.Layer >= 0 {
		s += fmt.Sprintf(" (layer %d)", e.Layer)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

func (e *RefusalError) Is(target error) bool { return target == ErrUpdateRefused }

// CheckUpdate decides whether the output described by rec (nil: no record)
// can be updated to the chain point newChain (base first, leaf last) of
// the disk disk on volume volumeUUID, given the output's fingerprint now
// (OutputFingerprint) and its format. It returns the layers of newChain
// past the recorded point — the layers whose grains make up the changes —
// or a *RefusalError:
//
//   - RefuseNoRecord: rec is nil;
//   - RefuseOutputChanged: the output's format, size, mtime or metadata
//     differ from the record (someone wrote to it); not checked while an
//     interrupted update is pending, which changed it itself;
//   - RefuseOtherSource: another volume or disk;
//   - RefuseChainRewritten: a recorded layer is now another file or has
//     another size (consolidated, deleted, reverted or written to);
//   - RefuseCIDMismatch: a recorded layer has another CID (its content
//     changed), or the layer after the recorded point is not its child;
//   - RefuseNotAncestor: the recorded point is not in newChain (newChain is
//     shorter), or an interrupted update's target is not an ancestor of
//     newChain (its half-written changes would not be covered).
func CheckUpdate(rec *Record, volumeUUID, disk string, newChain []Layer, format string, now Fingerprint) ([]Layer, error) {
	if rec == nil {
		return nil, &RefusalError{Reason: RefuseNoRecord, Layer: -1}
	}
	if rec.Output.Format != format {
		return nil, &RefusalError{Reason: RefuseOutputChanged, Layer: -1, Detail: fmt.Sprintf("the record is of a %s output, not %s", rec.Output.Format, format)}
	}
	if rec.State == StateComplete {
		want := rec.Output.Fingerprint
		switch {
		case now.Size != want.Size:
			return nil, &RefusalError{Reason: RefuseOutputChanged, Layer: -1, Detail: fmt.Sprintf("size %d, recorded %d", now.Size, want.Size)}
		case now.Metadata != want.Metadata:
			return nil, &RefusalError{Reason: RefuseOutputChanged, Layer: -1, Detail: "its metadata differ from the record"}
		case !now.ModTime.Equal(want.ModTime):
			return nil, &RefusalError{Reason: RefuseOutputChanged, Layer: -1, Detail: fmt.Sprintf("modified %s, recorded %s", now.ModTime.Format(time.RFC3339Nano), want.ModTime.Format(time.RFC3339Nano))}
		}
	}
	if rec.Source.VolumeUUID != volumeUUID || rec.Source.Disk != disk {
		return nil, &RefusalError{Reason: RefuseOtherSource, Layer: -1, Detail: fmt.Sprintf("recorded %s on volume %s, asked %s on volume %s", rec.Source.Disk, rec.Source.VolumeUUID, disk, volumeUUID)}
	}
	if err := prefixOf(rec.Source.Chain, newChain); err != nil {
		return nil, err
	}
	if rec.State == StateUpdateInProgress {
		if err := prefixOf(rec.UpdateTarget, newChain); err != nil {
			e := err.(*RefusalError)
			e.Reason = RefuseNotAncestor
			e.Detail = "an interrupted update to a chain that is not an ancestor of this one must be finished first: " + e.Detail
			return nil, e
		}
	}
	return newChain[len(rec.Source.Chain):], nil
}

// prefixOf checks that old is newChain's first len(old) layers, unchanged,
// and that the layer after them is a child of the last.
func prefixOf(old, newChain []Layer) error {
	if len(old) == 0 {
		return &RefusalError{Reason: RefuseChainRewritten, Layer: -1, Detail: "the record names no chain"}
	}
	if len(newChain) < len(old) {
		return &RefusalError{Reason: RefuseNotAncestor, Layer: len(newChain), Detail: fmt.Sprintf("the recorded point is layer %d (%s) but the chain has %d layers", len(old)-1, old[len(old)-1].File, len(newChain))}
	}
	for i, o := range old {
		n := newChain[i]
		switch {
		case n.File != o.File:
			return &RefusalError{Reason: RefuseChainRewritten, Layer: i, Detail: fmt.Sprintf("recorded %s, now %s", o.File, n.File)}
		case n.CID != o.CID || n.ParentCID != o.ParentCID:
			return &RefusalError{Reason: RefuseCIDMismatch, Layer: i, Detail: fmt.Sprintf("%s: CID %08x (parent %08x), recorded %08x (parent %08x)", n.File, uint32(n.CID), uint32(n.ParentCID), uint32(o.CID), uint32(o.ParentCID))}
		case n.Size != o.Size:
			return &RefusalError{Reason: RefuseChainRewritten, Layer: i, Detail: fmt.Sprintf("%s: %d bytes, recorded %d", n.File, n.Size, o.Size)}
		}
	}
	if len(newChain) > len(old) {
		last, next := old[len(old)-1], newChain[len(old)]
		if next.ParentCID != last.CID {
			return &RefusalError{Reason: RefuseCIDMismatch, Layer: len(old), Detail: fmt.Sprintf("%s has parentCID %08x, but the recorded point %s has CID %08x", next.File, uint32(next.ParentCID), last.File, uint32(last.CID))}
		}
	}
	return nil
}
