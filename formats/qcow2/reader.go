package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// Image is an open qcow2 image; it implements formats.Image. Its methods
// are safe for concurrent use (no cache, no shared buffer).
type Image struct {
	r         io.ReaderAt
	fileSize  int64
	size      int64
	version   uint32
	bits      uint32
	cs        int64
	l2Entries int64
	l1        []int64
	l1Off     int64
}

var _ formats.Image = (*Image)(nil)

// Open reads the header and L1 table of the qcow2 image r of fileSize
// bytes. Backing files, encryption, external data files, extended L2
// entries and compression types other than deflate are refused with
// ErrUnsupported; a compressed cluster is refused when Extent or ReadAt
// meets it.
func Open(r io.ReaderAt, fileSize int64) (*Image, error) {
	b := make([]byte, min(fileSize, 512))
	if n, err := r.ReadAt(b, 0); n < len(b) {
		return nil, fmt.Errorf("qcow2: reading header: %w", err)
	}
	h, err := parseHeader(b)
	if err != nil {
		return nil, err
	}
	switch {
	case h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits:
		return nil, errf(ErrCorrupt, "header", "cluster_bits", hClusterBits, "%d, want %d to %d", h.ClusterBits, minClusterBits, maxClusterBits)
	case h.BackingOffset != 0:
		return nil, errf(ErrUnsupported, "header", "backing_file_offset", hBackingOffset, "backing file (a snapshot overlay); convert the chain with its base")
	case h.CryptMethod != 0:
		return nil, errf(ErrUnsupported, "header", "crypt_method", hCryptMethod, "encryption method %d", h.CryptMethod)
	case h.Incompatible&incCorrupt != 0:
		return nil, errf(ErrCorrupt, "header", "incompatible_features", hIncompatible, "the corrupt bit is set; repair with qemu-img check -r all")
	case h.Incompatible&incExternalData != 0:
		return nil, errf(ErrUnsupported, "header", "incompatible_features", hIncompatible, "external data file")
	case h.Incompatible&incCompression != 0:
		return nil, errf(ErrUnsupported, "header", "incompatible_features", hIncompatible, "compression type other than deflate")
	case h.Incompatible&incExtendedL2 != 0:
		return nil, errf(ErrUnsupported, "header", "incompatible_features", hIncompatible, "extended L2 entries (subclusters)")
	case h.Incompatible&^incKnown != 0:
		return nil, errf(ErrUnsupported, "header", "incompatible_features", hIncompatible, "unknown incompatible features 0x%x", h.Incompatible&^incKnown)
	}
	// The dirty bit only says refcounts may be stale (lazy refcounts); the
	// L1 and L2 tables a reader uses are valid.
	img := &Image{r: r, fileSize: fileSize, version: h.Version, bits: h.ClusterBits}
	img.cs = int64(1) << h.ClusterBits
	img.l2Entries = img.cs / 8
	if h.Size > 1<<62 {
		return nil, errf(ErrCorrupt, "header", "size", hSize, "virtual size %d", h.Size)
	}
	img.size = int64(h.Size)
	need := ((img.size+img.cs-1)/img.cs + img.l2Entries - 1) / img.l2Entries
	l1Bytes := int64(h.L1Size) * 8
	img.l1Off = int64(h.L1Offset)
	switch {
	case int64(h.L1Size) < need:
		return nil, errf(ErrCorrupt, "header", "l1_size", hL1Size, "%d entries cannot map a %d-byte disk (%d needed)", h.L1Size, img.size, need)
	case h.L1Offset%uint64(img.cs) != 0 || h.L1Offset > uint64(fileSize) || l1Bytes > fileSize-img.l1Off:
		return nil, errf(ErrCorrupt, "header", "l1_table_offset", hL1Offset, "L1 table [0x%x, +0x%x) is misaligned or beyond the %d-byte file", h.L1Offset, l1Bytes, fileSize)
	}
	raw := make([]byte, need*8) // bounded by the file size, checked above
	if n, err := r.ReadAt(raw, img.l1Off); n < len(raw) {
		return nil, fmt.Errorf("qcow2: reading L1 table at 0x%x: %w", img.l1Off, err)
	}
	img.l1 = make([]int64, need)
	for i := range img.l1 {
		v := binary.BigEndian.Uint64(raw[i*8:])
		off := int64(v & offsetMask)
		entOff := img.l1Off + int64(i)*8
		switch {
		case v&l1Reserved != 0:
			return nil, errf(ErrCorrupt, fmt.Sprintf("L1 entry %d", i), "", entOff, "reserved bits set in 0x%016x", v)
		case off%img.cs != 0 || off > fileSize-img.cs:
			return nil, errf(ErrCorrupt, fmt.Sprintf("L1 entry %d", i), "", entOff, "L2 table at 0x%x is misaligned or beyond the %d-byte file", off, fileSize)
		}
		img.l1[i] = off
	}
	return img, nil
}

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.size }

// ClusterSize returns the cluster size.
func (img *Image) ClusterSize() int64 { return img.cs }

// Version returns the header version (2 or 3).
func (img *Image) Version() int { return int(img.version) }

// l2 reads the L2 entries [from, from+n) of the table of L1 entry i; an
// unallocated table reads as zero entries.
func (img *Image) l2(i, from, n int64) ([]uint64, error) {
	out := make([]uint64, n)
	if img.l1[i] == 0 {
		return out, nil
	}
	raw := make([]byte, n*8)
	off := img.l1[i] + from*8
	if m, err := img.r.ReadAt(raw, off); m < len(raw) {
		if err == nil || err == io.EOF {
			return nil, errf(ErrCorrupt, fmt.Sprintf("L2 table of L1 entry %d", i), "", img.l1[i], "short read")
		}
		return nil, fmt.Errorf("qcow2: reading L2 table at 0x%x: %w", off, err)
	}
	for k := range out {
		out[k] = binary.BigEndian.Uint64(raw[k*8:])
	}
	return out, nil
}

// classify decodes the L2 entry of guest cluster c (whose entry lies at
// file offset entOff) into a kind and, for data, the host offset.
func (img *Image) classify(v uint64, c, entOff int64) (formats.Kind, int64, error) {
	name := fmt.Sprintf("L2 entry of cluster %d", c)
	if v&flagCompressed != 0 {
		return 0, 0, errf(ErrUnsupported, name, "", entOff, "compressed cluster")
	}
	if v&l2Reserved != 0 {
		return 0, 0, errf(ErrCorrupt, name, "", entOff, "reserved bits set in 0x%016x", v)
	}
	if v&flagZero != 0 {
		if img.version < 3 {
			return 0, 0, errf(ErrCorrupt, name, "", entOff, "zero flag in a version 2 image")
		}
		return formats.Zero, 0, nil
	}
	off := int64(v & offsetMask)
	if off == 0 {
		return formats.Hole, 0, nil
	}
	if off%img.cs != 0 || off >= img.fileSize {
		return 0, 0, errf(ErrCorrupt, name, "", entOff, "data cluster at 0x%x is misaligned or beyond the %d-byte file", off, img.fileSize)
	}
	return formats.Data, off, nil
}

// Extent returns the run of one kind starting at off. It reads at most a
// few L2 tables, so the run may end early.
func (img *Image) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= img.size {
		return formats.Extent{}, fmt.Errorf("qcow2: extent at %d of a %d-byte disk: %w", off, img.size, formats.ErrOutOfRange)
	}
	nc := (img.size + img.cs - 1) / img.cs
	c := off / img.cs
	var kind formats.Kind
	reads := 0
	for c < nc {
		i := c / img.l2Entries
		from := c % img.l2Entries
		n := min(img.l2Entries, nc-i*img.l2Entries) - from
		if img.l1[i] == 0 { // a whole unallocated table
			if kind != 0 && kind != formats.Hole {
				break
			}
			kind = formats.Hole
			c += n
			continue
		}
		if reads == 4 {
			break
		}
		reads++
		ents, err := img.l2(i, from, n)
		if err != nil {
			return formats.Extent{}, err
		}
		for k, v := range ents {
			kd, _, err := img.classify(v, c, img.l1[i]+(from+int64(k))*8)
			if err != nil {
				return formats.Extent{}, err
			}
			if kind == 0 {
				kind = kd
			} else if kd != kind {
				return formats.Extent{Off: off, Len: min(c*img.cs, img.size) - off, Kind: kind}, nil
			}
			c++
		}
	}
	return formats.Extent{Off: off, Len: min(c*img.cs, img.size) - off, Kind: kind}, nil
}

// ReadAt reads virtual-disk bytes; unallocated and zero clusters read as
// zeros.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2: read at negative offset %d: %w", off, formats.ErrOutOfRange)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > img.size-off {
		p, eof = p[:img.size-off], io.EOF
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		c := pos / img.cs
		i, from := c/img.l2Entries, c%img.l2Entries
		last := (pos + int64(len(p)-done) - 1) / img.cs
		n := min(last-c+1, img.l2Entries-from)
		ents, err := img.l2(i, from, n)
		if err != nil {
			return done, err
		}
		for k, v := range ents {
			kd, host, err := img.classify(v, c+int64(k), img.l1[i]+(from+int64(k))*8)
			if err != nil {
				return done, err
			}
			pos := off + int64(done)
			in := pos % img.cs
			dst := p[done : done+int(min(int64(len(p)-done), img.cs-in))]
			if kd == formats.Data {
				m, err := img.r.ReadAt(dst, host+in)
				if m < len(dst) {
					if err == nil || err == io.EOF {
						err = errf(ErrCorrupt, fmt.Sprintf("data cluster of cluster %d", c+int64(k)), "", host, "file ends inside the cluster")
					}
					return done + m, err
				}
			} else {
				clear(dst)
			}
			done += len(dst)
		}
	}
	return done, eof
}
