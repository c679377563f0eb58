package vmfs

import "encoding/binary"

// Free returns the bytes of the volume that no file uses, counted from the
// cluster headers of .fbb.sf (§6.1: per cluster a metadata block
// {clusterNum, total, free, nextFree} after the lock block). It reads
// clustersPerGroup headers per cluster group — 64 KiB per 12.5 GiB of a
// 1 MiB-block VMFS5 volume. VMFS6 keeps its file-block accounting in the
// nested LFB/SFB cluster groups, whose layout is not known well enough
// (vmfs-format.md §16): there Free returns ErrUnsupported.
func (v *Volume) Free() (int64, error) {
	if v.info.Version >= 6 {
		return 0, fieldErr(ErrUnsupported, ".fbb.sf cluster headers", "", -1, "VMFS6 free-space accounting is not supported")
	}
	rf, err := v.sysRes(resFBB, ".fbb.sf", 0)
	if err != nil {
		return 0, err
	}
	h := rf.h
	blocks := v.info.Capacity / v.info.BlockSize
	if h.rpc == 0 || h.cpg == 0 {
		return 0, fieldErr(ErrCorrupt, ".fbb.sf resource header", "resourcesPerCluster", -1, "%d resources in %d clusters per group", h.rpc, h.cpg)
	}
	clusters := (blocks + int64(h.rpc) - 1) / int64(h.rpc)
	size := rf.ino.size()
	hdrs := make([]byte, int64(h.cpg)*rf.hdr)
	var free int64
	for c := int64(0); c < clusters; c += int64(h.cpg) {
		g := c / int64(h.cpg)
		off := int64(h.cgOffset) + g*int64(h.cgSize)
		if int64(h.cgSize) < int64(len(hdrs)) || off < 0 || off > size-int64(len(hdrs)) {
			return 0, fieldErr(ErrCorrupt, ".fbb.sf cluster group", "", off, "group %d of %d bytes lies outside the %d-byte file", g, h.cgSize, size)
		}
		if err := rf.ino.fill(hdrs, off, 0, true); err != nil {
			return 0, err
		}
		for k := int64(0); k < int64(h.cpg) && c+k < clusters; k++ {
			m := hdrs[k*rf.hdr+rf.hdr/2:]
			total, n := binary.LittleEndian.Uint32(m[4:]), binary.LittleEndian.Uint32(m[8:])
			if n > total || total > h.rpc {
				return 0, fieldErr(ErrCorrupt, ".fbb.sf cluster header", "free", off+k*rf.hdr+rf.hdr/2+8, "cluster %d: %d free of %d (at most %d per cluster)", c+k, n, total, h.rpc)
			}
			free += int64(n)
		}
	}
	return free * v.info.BlockSize, nil
}
