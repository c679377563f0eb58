package vmfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
)

var le = binary.LittleEndian

func u16(b []byte, off int) uint16 { return le.Uint16(b[off:]) }
func u32(b []byte, off int) uint32 { return le.Uint32(b[off:]) }
func u64(b []byte, off int) uint64 { return le.Uint64(b[off:]) }

// cstr returns the bytes of a NUL-padded name field up to the first NUL.
func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// UUID is a VMFS UUID: u32 timeLo, u32 timeHi, u16 rand, u8 mac[6] (§3.1).
type UUID [16]byte

func uuidAt(b []byte, off int) UUID {
	var u UUID
	copy(u[:], b[off:off+16])
	return u
}

// String prints the UUID as VMware does, e.g.
// 49edf842-dcb35d37-b383-0021280083cf.
func (u UUID) String() string {
	return fmt.Sprintf("%08x-%08x-%04x-%012x", le.Uint32(u[0:]), le.Uint32(u[4:]), le.Uint16(u[8:]),
		uint64(u[10])<<40|uint64(u[11])<<32|uint64(u[12])<<24|uint64(u[13])<<16|uint64(u[14])<<8|uint64(u[15]))
}

// IsZero reports whether the UUID is all zeros.
func (u UUID) IsZero() bool { return u == UUID{} }

func isPow2(x uint64) bool { return x != 0 && x&(x-1) == 0 }

func log2(x uint64) uint { return uint(bits.TrailingZeros64(x)) }

// mulOK returns a*b and whether it fits in an int64 (a, b >= 0).
func mulOK(a, b int64) (int64, bool) {
	if a < 0 || b < 0 {
		return 0, false
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > 1<<63-1 {
		return 0, false
	}
	return int64(lo), true
}
