package vmfs

import "testing"

func TestNameHash(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hash  uint64
		index uint32
		root  bool
	}{
		// Vectors of §9.2: "directory" sits in the root, the others in
		// that subdirectory.
		{"directory", 0x5F1265850DBC9F66, 15490, true},
		{"file1", 0x7B2720D6D2B970EB, 4348, false},
		{"file4", 0x599B52377490219A, 9680, false},
		{"symlink", 0x6EF0258CFCDD1580, 6767, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h := NameHash(tc.name); h != tc.hash {
				t.Errorf("NameHash = %#x, want %#x", h, tc.hash)
			}
			if i := hashIndex(tc.name, tc.root); i != tc.index {
				t.Errorf("index = %d, want %d", i, tc.index)
			}
		})
	}
	if i := hashIndex(".sbc.sf", true); i != 0x3E69 {
		t.Errorf(".sbc.sf index %#x", i)
	}
}
