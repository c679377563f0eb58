package testimages

import "testing"

// Test vectors from a real VMFS6 volume (vmfs-format.md §9.2). "directory"
// sits in the root (modulus 15973); the other three sit inside it (modulus
// 16001) — the doc lists all four as root indexes, which holds only for the
// first.
func TestVMFS6NameHash(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hash    uint64
		index   uint64
		modulus uint64
	}{
		{"directory", 0x5F1265850DBC9F66, 15490, 15973},
		{"file1", 0x7B2720D6D2B970EB, 4348, 16001},
		{"file4", 0x599B52377490219A, 9680, 16001},
		{"symlink", 0x6EF0258CFCDD1580, 6767, 16001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := vmfs6NameHash(tc.name)
			if h != tc.hash {
				t.Fatalf("hash = %#x, want %#x", h, tc.hash)
			}
			if h%tc.modulus != tc.index {
				t.Fatalf("index = %d, want %d", h%tc.modulus, tc.index)
			}
		})
	}
}
