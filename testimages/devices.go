package testimages

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
)

// devices are the extent files of the volume being written: device e holds
// logical [e·perExt·256 MiB, (e+1)·perExt·256 MiB) at physical
// partOff + 0x1100000, linearly (as every real sample lays PEs out).
type devices struct {
	paths   []string
	files   []*os.File
	perExt  int64 // PEs per device
	partOff int64 // partition start (0 without a partition table)
	devSize int64 // size of each device file
	fsUUID  string
	lvUUID  [16]byte
	fsID    [16]byte
}

func (d *devices) close() error {
	var first error
	for _, f := range d.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// writeLogical writes b at logical volume offset off, splitting at device
// boundaries.
func (d *devices) writeLogical(b []byte, off int64) error {
	span := d.perExt * peSize
	for len(b) > 0 {
		e := off / span
		if e >= int64(len(d.files)) {
			return fmt.Errorf("testimages: write at logical %#x beyond the volume", off)
		}
		in := off % span
		n := min(int64(len(b)), span-in)
		if _, err := d.files[e].WriteAt(b[:n], d.partOff+peDataAt+in); err != nil {
			return err
		}
		b, off = b[n:], off+n
	}
	return nil
}

func uuidBytes(seed uint64) [16]byte {
	var u [16]byte
	binary.LittleEndian.PutUint32(u[0:], uint32(0x5f000000|mix64(seed)&0xffffff))
	binary.LittleEndian.PutUint32(u[4:], uint32(mix64(seed^1)))
	binary.LittleEndian.PutUint16(u[8:], uint16(mix64(seed^2)))
	mac := mix64(seed ^ 3)
	for i := 0; i < 6; i++ {
		u[10+i] = byte(mac >> (8 * i))
	}
	return u
}

// uuidString prints a VMware UUID: %08x-%08x-%04x-%012x of its fields.
func uuidString(u [16]byte) string {
	return fmt.Sprintf("%08x-%08x-%04x-%02x%02x%02x%02x%02x%02x",
		binary.LittleEndian.Uint32(u[0:]), binary.LittleEndian.Uint32(u[4:]), binary.LittleEndian.Uint16(u[8:]),
		u[10], u[11], u[12], u[13], u[14], u[15])
}

func (v *vol) layoutDevices(out string, perExt, volSize int64) (*devices, error) {
	d := &devices{perExt: perExt}
	if v.spec.Partition != "" {
		d.partOff = mib
	}
	d.devSize = d.partOff + peDataAt + perExt*peSize
	if v.spec.Partition == "gpt" {
		d.devSize += mib // room for the backup GPT
	}
	s := uint64(v.spec.Seed)
	d.lvUUID, d.fsID = uuidBytes(s^0x1111), uuidBytes(s^0x2222)
	d.fsUUID = uuidString(d.fsID)
	for e := 0; e < v.spec.Extents; e++ {
		p := out
		if v.spec.Extents > 1 {
			p = fmt.Sprintf("%s.%d", out, e)
		}
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			d.close()
			return nil, err
		}
		d.paths = append(d.paths, p)
		d.files = append(d.files, f)
		if err := f.Truncate(d.devSize); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

// writeAll writes every structure of the volume.
func (v *vol) writeAll(d *devices) error {
	g := v.g
	for e, f := range d.files {
		if err := v.writeLVM(d, e, f); err != nil {
			return err
		}
		if err := writePartitionTable(v.spec.Partition, f, d.devSize, d.partOff); err != nil {
			return err
		}
	}
	if err := d.writeLogical(v.fsDescriptor(d), fsDescAt); err != nil {
		return err
	}
	if v.spec.LiveHeartbeat {
		hb := make([]byte, 0x60)
		le32(hb, 0, 0xABCDEF02)
		le64(hb, 4, hbAt)
		le64(hb, 0xC, 7)
		le64(hb, 0x14, 123456789)
		host := uuidBytes(uint64(v.spec.Seed) ^ 0x4444)
		copy(hb[0x1C:], host[:])
		copy(hb[0x36:], "192.0.2.10")
		if err := d.writeLogical(hb, hbAt); err != nil {
			return err
		}
	}
	for _, f := range []*resFile{v.fdc, v.sbc, v.pbc, v.pb2, v.jbc, v.fbb} {
		if f == nil || f.hdr == nil {
			continue
		}
		if err := d.writeLogical(f.hdr, v.fileLogical(f, 0)); err != nil {
			return err
		}
	}
	for _, n := range v.nodes {
		if err := d.writeLogical(v.fd(n), v.resLogical(v.fdc, n.fd)); err != nil {
			return err
		}
	}
	for _, w := range v.writes {
		if isZero(w.b) {
			continue
		}
		if err := d.writeLogical(w.b, w.off); err != nil {
			return err
		}
	}
	buf := make([]byte, g.blockSize)
	for _, b := range v.data {
		b.n.fill(buf, b.index*g.blockSize)
		if isZero(buf) {
			continue
		}
		if err := d.writeLogical(buf, b.block*g.blockSize); err != nil {
			return err
		}
	}
	// TBZ blocks hold stale bytes: a reader that ignores the flag returns
	// this garbage instead of zeros.
	for _, b := range v.tbz {
		garbage(buf, b)
		if err := d.writeLogical(buf, b*g.blockSize); err != nil {
			return err
		}
	}
	return nil
}

func garbage(p []byte, block int64) {
	randFill(p, 0x7B2_6A7BA6E^uint64(block), 0)
	for i := 0; i+16 <= len(p); i += 4096 {
		copy(p[i:], "STALE TBZ BLOCK!")
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// writeLVM writes device e's LVM header, volume descriptor, device-name
// table and PE table (vmfs-format.md §3, §13.1).
func (v *vol) writeLVM(d *devices, e int, f *os.File) error {
	g := v.g
	base := d.partOff + lvmAt
	hdr := make([]byte, 0x100)
	le32(hdr, 0x00, 0xC001D00D)
	le32(hdr, 0x04, g.lvmMajor)
	le32(hdr, 0x08, g.lvmMinor)
	name := fmt.Sprintf("synthetic%d", e)
	hdr[0x0C] = 0 // type
	hdr[0x0D] = byte(len(name))
	copy(hdr[0x0C+6:], "VMFS2VHD")
	copy(hdr[0x0C+14:], "SYNTHETIC DISK  ")
	copy(hdr[0x0C+30:], "1.0 ")
	copy(hdr[0x0C+34:], name)
	le32(hdr, 0x5A, 512)
	le64(hdr, 0x5E, uint64(d.devSize-d.partOff))
	le32(hdr, 0x66, 1)
	var nPE int64 = d.perExt
	if g.vmfs == 6 {
		nPE = 1
	}
	le32(hdr, 0x6A, uint32(nPE))
	le32(hdr, 0x6E, uint32(nPE-1))
	le64(hdr, 0x72, 1)
	le64(hdr, 0x7A, peDataAt)
	devID := uuidBytes(uint64(v.spec.Seed) ^ 0x3333 ^ uint64(e)<<32)
	copy(hdr[0x82:], devID[:])
	t := uint64(1700000000+v.spec.Seed%100000) * 1000000
	le64(hdr, 0x92, t)
	le64(hdr, 0x9A, t)
	if !g.esxi || g.vmfs == 5 {
		le32(hdr, 0xBE, 1) // numPEMaps; ESXi leaves 0 (= 1) on LVM3 and LVM6 (§3.1, §15.1)
	}
	if v.spec.Local {
		le32(hdr, 0xD2, 1) // VMFS-L (dissect.vmfs: flags 1 == VMFSL)
	}
	if g.vmfs == 6 {
		le32(hdr, 0xCA, uint32(g.md))
		le32(hdr, 0xCE, uint32(d.perExt))
	}
	if _, err := f.WriteAt(hdr, base); err != nil {
		return err
	}
	first := int64(e) * d.perExt
	vd := make([]byte, 0x200)
	le64(vd, 0x00, uint64(d.perExt*int64(len(d.files))*peSize))
	le64(vd, 0x08, 1)
	le32(vd, 0x10, 1)
	copy(vd[0x14:], uuidString(d.lvUUID))
	copy(vd[0x54:], d.lvUUID[:])
	le32(vd, 0x64, 1)
	le64(vd, 0x68, t)
	le32(vd, 0x70, 0)
	le32(vd, 0x74, uint32(d.perExt))
	le64(vd, 0x78, uint64(first))
	le64(vd, 0x80, uint64(first+d.perExt-1))
	le64(vd, 0x88, t)
	le32(vd, 0x90, uint32(len(d.files)))
	consumed := uint32(d.perExt * int64(len(d.files)))
	if g.esxi {
		// consumedPEs: 1 on LVM6, 0 on LVM3/5 on the real volumes (§15.1).
		consumed = map[bool]uint32{true: 1, false: 0}[g.vmfs == 6]
	}
	le32(vd, 0x110, consumed)
	if _, err := f.WriteAt(vd, base+g.lvmH); err != nil {
		return err
	}
	if e == 0 {
		sd := make([]byte, 256*len(d.files))
		for i := range d.files {
			copy(sd[i*256:], fmt.Sprintf("synthetic%d:1", i))
		}
		if _, err := f.WriteAt(sd, base+g.lvmH+0x7E000); err != nil {
			return err
		}
	}
	bitmapAt := base + g.lvmH + 0x80000
	bitmapSize := int64(0x400)
	if g.vmfs == 6 {
		bitmapSize = max(g.md, 0x400)
	}
	bm := make([]byte, bitmapSize)
	pe := make([]byte, nPE*128)
	for j := int64(0); j < nPE; j++ {
		bm[j/8] |= 1 << (j % 8)
		o := int(j * 128)
		length := int64(peSize)
		if g.vmfs == 6 {
			length = d.perExt * peSize
		}
		pe[o] = 1
		le32(pe, o+1, uint32(first+j))
		le32(pe, o+5, 0)
		le64(pe, o+9, uint64(peDataAt+j*peSize))
		le64(pe, o+17, uint64((first+j)*peSize))
		le64(pe, o+25, uint64(length))
		le32(pe, o+33, 1)
	}
	if _, err := f.WriteAt(bm, bitmapAt); err != nil {
		return err
	}
	_, err := f.WriteAt(pe, bitmapAt+bitmapSize)
	return err
}

// fsDescriptor encodes the FS descriptor (vmfs-format.md §4).
func (v *vol) fsDescriptor(d *devices) []byte {
	g := v.g
	b := make([]byte, 0x200)
	le32(b, 0x00, g.magic)
	le32(b, 0x04, g.fsMajor)
	b[0x08] = g.fsMinor
	copy(b[0x09:], d.fsID[:])
	le32(b, 0x19, g.config)
	copy(b[0x1D:0x1D+127], v.spec.Label)
	le32(b, 0x9D, 512)
	le64(b, 0xA1, uint64(g.blockSize))
	le32(b, 0xA9, uint32(1700000000+v.spec.Seed%100000))
	le32(b, 0xAD, 1)
	copy(b[0xB1:], d.lvUUID[:])
	le32(b, 0xC1, 1)
	le32(b, 0xD1, 0x10000)
	le32(b, 0xD5, uint32(g.fdc.cpg))
	le32(b, 0xD9, uint32(g.sbSize))
	if g.vmfs >= 5 {
		le32(b, 0xDD, 8) // maxJournalSlotsPerTxn (real: 8 on VMFS5, 64 on VMFS6)
		// The FDs of .pb2.sf and .sdd.sf: readers of a volume without
		// DENSE_SBPC (an upgraded one) find them here, not at FD 6 and 7.
		for _, n := range v.root.children {
			switch {
			case n.res == v.pb2:
				le64(b, 0xE1, uint64(v.resLogical(v.fdc, n.fd)))
				le32(b, 0xE9, g.fdAddr(n.fd))
			case n == v.sdd:
				le64(b, 0x105, uint64(v.resLogical(v.fdc, n.fd)))
				le32(b, 0x10D, g.fdAddr(n.fd))
			}
		}
		le64(b, 0xFD, 1)
	}
	if g.vmfs == 6 {
		le32(b, 0xDD, 64)
		le16(b, 0x112, 1)
		le32(b, 0x130, 512)
		le32(b, 0x134, uint32(g.md))
		le16(b, 0x138, 9)
		le16(b, 0x13E, 16)
		le16(b, 0x140, 44)
		le32(b, 0x144, uint32(mib))
		le32(b, 0x148, uint32(2*mib))
		le32(b, 0x14C, 16000)
		le32(b, 0x150, 4000)
	}
	return b
}

// VMFS partition type GUID AA31E02A-400F-11DB-9590-000C2911D1B8, in GPT's
// mixed-endian byte order.
var vmfsGPTType = [16]byte{0x2A, 0xE0, 0x31, 0xAA, 0x0F, 0x40, 0xDB, 0x11, 0x95, 0x90, 0x00, 0x0C, 0x29, 0x11, 0xD1, 0xB8}

// writePartitionTable writes an MBR with one 0xFB partition, or a GPT with
// one VMFS partition, starting at partOff.
func writePartitionTable(kind string, f *os.File, devSize, partOff int64) error {
	if kind == "" {
		return nil
	}
	sectors := devSize / 512
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xAA
	e := mbr[446:462]
	if kind == "mbr" {
		e[4] = 0xFB
		le32(e, 8, uint32(partOff/512))
		le32(e, 12, uint32(sectors-partOff/512))
		_, err := f.WriteAt(mbr, 0)
		return err
	}
	e[4] = 0xEE
	le32(e, 8, 1)
	le32(e, 12, uint32(min(sectors-1, 0xffffffff)))
	if _, err := f.WriteAt(mbr, 0); err != nil {
		return err
	}
	entries := make([]byte, 128*128)
	copy(entries, vmfsGPTType[:])
	pid := uuidBytes(uint64(devSize) ^ 0x6767)
	copy(entries[16:], pid[:])
	lastUsable := sectors - 34
	le64(entries, 32, uint64(partOff/512))
	le64(entries, 40, uint64(lastUsable))
	name := "vmfs"
	for i, c := range name {
		le16(entries, 56+2*i, uint16(c))
	}
	entCRC := crc32.ChecksumIEEE(entries)
	header := func(self, alt, entLBA int64) []byte {
		h := make([]byte, 512)
		copy(h, "EFI PART")
		le32(h, 8, 0x00010000)
		le32(h, 12, 92)
		le64(h, 24, uint64(self))
		le64(h, 32, uint64(alt))
		le64(h, 40, 34)
		le64(h, 48, uint64(lastUsable))
		did := uuidBytes(uint64(devSize) ^ 0x6768)
		copy(h[56:], did[:])
		le64(h, 72, uint64(entLBA))
		le32(h, 80, 128)
		le32(h, 84, 128)
		le32(h, 88, entCRC)
		le32(h, 16, crc32.ChecksumIEEE(h[:92]))
		return h
	}
	if _, err := f.WriteAt(header(1, sectors-1, 2), 512); err != nil {
		return err
	}
	if _, err := f.WriteAt(entries, 1024); err != nil {
		return err
	}
	if _, err := f.WriteAt(entries, (sectors-33)*512); err != nil {
		return err
	}
	_, err := f.WriteAt(header(sectors-1, 1, sectors-33), (sectors-1)*512)
	return err
}
