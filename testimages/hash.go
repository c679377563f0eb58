package testimages

import "encoding/binary"

// vmfs6NameHash is the hash VMFS6 uses to place a name in a hashed
// directory (vmfs-format.md §9.2): the name in a 256-byte key salted from the
// first 8-byte boundary past its end up to byte 127, hashed as 32 quads with
// Bob Jenkins' lookup8 mix (public domain).
func vmfs6NameHash(name string) uint64 {
	var key [256]byte
	n := copy(key[:], name)
	for o := (n + 8) &^ 7; o+8 <= 128; o += 8 {
		binary.LittleEndian.PutUint64(key[o:], 0x739A75C28E61B017)
	}
	var q [32]uint64
	for i := range q {
		q[i] = binary.LittleEndian.Uint64(key[i*8:])
	}
	a, b, c := uint64(42), uint64(42), uint64(0x9E3779B97F4A7C13)
	for i := 0; i < 30; i += 3 {
		a += q[i]
		b += q[i+1]
		c += q[i+2]
		a, b, c = lookup8Mix(a, b, c)
	}
	c += 32
	a += q[30]
	b += q[31]
	_, _, c = lookup8Mix(a, b, c)
	return c
}

func lookup8Mix(a, b, c uint64) (uint64, uint64, uint64) {
	for _, s := range [4][3]uint{{43, 9, 8}, {38, 23, 5}, {35, 49, 11}, {12, 18, 22}} {
		a = (a - b - c) ^ (c >> s[0])
		b = (b - c - a) ^ (a << s[1])
		c = (c - a - b) ^ (b >> s[2])
	}
	return a, b, c
}
