package vmfs

import (
	"fmt"
)

// Free returns the bytes of the volume that no file uses, counted from the
// cluster metadata of .fbb.sf (§6.1).
//
// VMFS3/5: per cluster a metadata block {clusterNum, total, free, nextFree}
// after the lock block; Free sums the free counters of the clusters that
// cover the volume's blocks, times the file block size. It reads
// clustersPerGroup headers per cluster group — 64 KiB per 12.5 GiB of a
// 1 MiB-block VMFS5 volume.
//
// VMFS6: see free6.
func (v *Volume) Free() (int64, error) {
	rf, err := v.resource(kFBB)
	if rf == nil {
		if err == nil {
			err = corruptf(".fbb.sf", -1, "the volume has no .fbb.sf")
		}
		return 0, err
	}
	if v.info.Version >= 6 {
		return v.free6(rf)
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
			total, n := u32(m, 4), u32(m, 8)
			if n > total || total > h.rpc {
				return 0, fieldErr(ErrCorrupt, ".fbb.sf cluster header", "free", off+k*rf.hdr+rf.hdr/2+8, "cluster %d: %d free of %d (at most %d per cluster)", c+k, n, total, h.rpc)
			}
			free += int64(n)
		}
	}
	return free * v.info.BlockSize, nil
}

// VMFS6 cluster metadata (§6.1, §15.1; dissect.vmfs Res3_ClusterMetaVMFS6),
// offsets inside the metadata block of a cluster header.
const (
	cm6Signature  = 0x10 // bytes "dmcr"
	cm6ClusterNum = 0x18 // u64
	cm6Total      = 0x20 // u16
	cm6Free       = 0x22 // u16
	cm6Bitmap     = 0x80 // bit set = free resource
	cm6Magic      = 0x72636D64
)

// free6 counts VMFS6 free space. .fbb.sf holds two nested resources
// (§6.1): the LFB header at offset 0 (512 MiB large file blocks) and the SFB
// header at childMetaOffset (1 MiB small file blocks). LFB n and SFB
// cluster n cover the same 512 MiB of the volume (dissect resolves LFB n to
// n << (fileBlockShift + sfbToLfbShift) and SFB (c, r) to (c·rpc + r) <<
// fileBlockShift, rpc = 512): they are one space, not two. When the SFB
// header has the has-parent flag (0x2), the SFB cluster groups live in the
// resource data of the LFB cluster groups (dissect's _cluster_group_offset):
//
//	perParent = parentClustersPerGroup·parentResourcesPerCluster / clustersPerGroup
//	g = c / cpg, k = c % cpg
//	header(c) = clusterGroupOffset + (g / perParent)·parentClusterGroupSize
//	            + parentClustersPerGroup·H + (g % perParent)·clusterGroupSize + k·H
//
// i.e. 0x20000 + c·0x2000 on ESXi's geometry; without the flag, header(c)
// is that of an ordinary resource file. Each header is a lock block and a
// metadata block (H/2 each); the metadata {"dmcr", clusterNum, total, free}
// is read at header+H/2, or at header+0 when only that carries the
// signature.
//
// Free = (Σ over SFB clusters c covering the volume: the cluster's free
// counter if its metadata is initialised (signature "dmcr"), else — the
// 512 MiB was never split into SFBs — all its blocks on the volume if LFB c
// is free in the LFB bitmap, else 0) × the file block size.
func (v *Volume) free6(rf *resFile) (int64, error) {
	lh := rf.h
	if rf.child == nil {
		return 0, fieldErr(ErrUnsupported, ".fbb.sf resource header", "childMetaOffset", -1,
			"0: a VMFS6 .fbb.sf without an SFB child header is unsupported")
	}
	ch := *rf.child
	H := rf.hdr
	bad := func(field, format string, args ...any) (int64, error) {
		e := fieldErr(ErrCorrupt, ".fbb.sf SFB header", field, -1, format, args...)
		e.Path, e.FD = rf.name, rf.ino.addr
		return 0, e
	}
	switch {
	case uint64(ch.rpc) != v.sfbRPC:
		return bad("resourcesPerCluster", "%d (unusable; %d in use)", ch.rpc, v.sfbRPC)
	case ch.cpg == 0 || ch.cpg > 1<<16:
		return bad("clustersPerGroup", "%d", ch.cpg)
	case int64(ch.cgSize) < int64(ch.cpg)*H:
		return bad("clusterGroupSize", "0x%x, less than %d cluster headers", ch.cgSize, ch.cpg)
	}
	if lh.flags&resFlagHasParent != 0 {
		return 0, fieldErr(ErrUnsupported, ".fbb.sf resource header", "flags", -1,
			"0x%x: an LFB header with a parent of its own is unsupported", lh.flags)
	}
	nested := ch.flags&resFlagHasParent != 0
	var perParent int64
	if nested {
		switch {
		case ch.parentRPC == 0 || ch.parentCPG == 0 || ch.parentCGSize == 0:
			return bad("parentResourcesPerCluster", "%d/%d/0x%x: the has-parent flag without a parent geometry", ch.parentRPC, ch.parentCPG, ch.parentCGSize)
		case (int64(ch.parentCPG)*int64(ch.parentRPC))%int64(ch.cpg) != 0:
			return 0, fieldErr(ErrUnsupported, ".fbb.sf SFB header", "clustersPerGroup", -1,
				"%d does not divide the parent's %d×%d resources: unsupported nesting", ch.cpg, ch.parentCPG, ch.parentRPC)
		}
		perParent = int64(ch.parentCPG) * int64(ch.parentRPC) / int64(ch.cpg)
		if int64(ch.cgSize)*perParent > int64(ch.parentCGSize) {
			return bad("clusterGroupSize", "%d groups of 0x%x bytes in a 0x%x-byte parent group", perParent, ch.cgSize, ch.parentCGSize)
		}
	}
	header := func(c int64) (int64, bool) {
		g, k := c/int64(ch.cpg), c%int64(ch.cpg)
		if !nested {
			a, ok := mulOK(g, int64(ch.cgSize))
			return int64(ch.cgOffset) + a + k*H, ok
		}
		a, ok := mulOK(g/perParent, int64(ch.parentCGSize))
		return int64(ch.cgOffset) + a + int64(ch.parentCPG)*H + (g%perParent)*int64(ch.cgSize) + k*H, ok
	}
	size := rf.ino.size()
	blocks := v.info.Capacity / v.info.BlockSize
	rpc := int64(ch.rpc)
	clusters := (blocks + rpc - 1) / rpc
	// Read one SFB cluster group at a time, or what the file holds of it:
	// ESXi sizes .fbb.sf to the clusters the volume has (0x20000 + 0x2000
	// per 512 MiB on the real volume of §15.1), not to whole groups.
	buf := make([]byte, int64(ch.cpg)*H)
	var grp []byte
	grpOff := int64(-1)
	var free int64
	for c := int64(0); c < clusters; c++ {
		hdr, ok1 := header(c)
		first, ok2 := header(c - c%int64(ch.cpg))
		if !ok1 || !ok2 || first < 0 || hdr > size-H {
			return 0, &Error{Path: rf.name, FD: rf.ino.addr, What: fmt.Sprintf(".fbb.sf SFB cluster %d", c), Vol: -1, DevOff: -1, Err: ErrCorrupt,
				Msg: fmt.Sprintf("its cluster header at file offset 0x%x lies outside the %d-byte file", hdr, size)}
		}
		if first != grpOff {
			grp = buf[:min(int64(len(buf)), size-first)]
			if err := rf.ino.fill(grp, first, 0, true); err != nil {
				return 0, err
			}
			grpOff = first
		}
		m, ok := clusterMeta6(grp[hdr-first:hdr-first+H], H)
		if ok {
			total, n := int64(u16(m, cm6Total)), int64(u16(m, cm6Free))
			if cn := u64(m, cm6ClusterNum); cn != uint64(c) || n > total || total > rpc {
				return 0, &Error{Path: rf.name, FD: rf.ino.addr, What: fmt.Sprintf(".fbb.sf SFB cluster %d metadata", c), Vol: -1, DevOff: -1, Err: ErrCorrupt,
					Msg: fmt.Sprintf("at file offset 0x%x: clusterNum %d, %d free of %d (at most %d per cluster)", hdr, cn, n, total, rpc)}
			}
			free += n
			continue
		}
		// Never split into SFBs: free iff LFB c is free.
		lfbFree, err := v.lfbFree(rf, c)
		if err != nil {
			return 0, err
		}
		if lfbFree {
			free += min(rpc, blocks-c*rpc)
		}
	}
	return free * v.info.BlockSize, nil
}

// clusterMeta6 returns the metadata block of a VMFS6 cluster header b (H
// bytes) and whether it carries the "dmcr" signature: at H/2 (after the
// lock block), or at 0.
func clusterMeta6(b []byte, H int64) ([]byte, bool) {
	for _, off := range []int64{H / 2, 0} {
		if off+cm6Bitmap <= int64(len(b)) && u32(b, int(off)+cm6Signature) == cm6Magic {
			return b[off:], true
		}
	}
	return nil, false
}

// lfbFree reports whether LFB n is free in the LFB bitmap of .fbb.sf (the
// ordinary cluster headers of the LFB resource at offset 0).
func (v *Volume) lfbFree(rf *resFile, n int64) (bool, error) {
	lh, ch := rf.h, rf.child
	what := fmt.Sprintf(".fbb.sf SFB cluster %d", n)
	if v.lfbShift != log2(uint64(v.fsbs))+log2(uint64(ch.rpc)) || !isPow2(uint64(ch.rpc)) {
		return false, &Error{Path: rf.name, FD: rf.ino.addr, What: what, Vol: -1, DevOff: -1, Err: ErrUnsupported,
			Msg: fmt.Sprintf("no cluster metadata, and LFBs of 2^%d bytes do not match clusters of %d SFBs: unsupported", v.lfbShift, ch.rpc)}
	}
	if lh.rpc == 0 || lh.cpg == 0 || lh.cpg > 1<<16 || int64(lh.cgSize) < int64(lh.cpg)*rf.hdr {
		return false, &Error{Path: rf.name, FD: rf.ino.addr, What: ".fbb.sf LFB header", Vol: -1, DevOff: -1, Err: ErrCorrupt,
			Msg: fmt.Sprintf("%d resources per cluster, %d clusters per group of 0x%x bytes", lh.rpc, lh.cpg, lh.cgSize)}
	}
	c, r := n/int64(lh.rpc), n%int64(lh.rpc)
	g, k := c/int64(lh.cpg), c%int64(lh.cpg)
	a, ok := mulOK(g, int64(lh.cgSize))
	off := int64(lh.cgOffset) + a + k*rf.hdr
	if !ok || off < 0 || off > rf.ino.size()-rf.hdr {
		return false, &Error{Path: rf.name, FD: rf.ino.addr, What: what, Vol: -1, DevOff: -1, Err: ErrCorrupt,
			Msg: fmt.Sprintf("no SFB cluster metadata, and the header of LFB cluster %d lies outside the %d-byte file", c, rf.ino.size())}
	}
	b := make([]byte, rf.hdr)
	if err := rf.ino.fill(b, off, 0, true); err != nil {
		return false, err
	}
	m, ok := clusterMeta6(b, rf.hdr)
	if !ok || int64(len(m)) < cm6Bitmap+(r/8)+1 {
		return false, &Error{Path: rf.name, FD: rf.ino.addr, What: what, Vol: -1, DevOff: -1, Err: ErrCorrupt,
			Msg: fmt.Sprintf("neither it nor LFB cluster %d (file offset 0x%x) has cluster metadata (signature \"dmcr\")", c, off)}
	}
	return m[cm6Bitmap+r/8]&(1<<(r%8)) != 0, nil
}
