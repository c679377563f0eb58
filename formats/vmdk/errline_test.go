package vmdk

import (
	"errors"
	"strings"
	"testing"
)

// Chain errors found by the corruption suite (issue 8) name the descriptor
// line to blame: a damaged parentCID, a hint that loops back or leads
// nowhere, a descriptor without extents.
func TestChainErrorsNameTheLine(t *testing.T) {
	flat := make([]byte, 1<<20)
	ext := []string{`RW 2048 VMFS "base-flat.vmdk"`}
	base := descText(0x11, NoParentCID, "vmfs", "", ext)
	for _, tc := range []struct {
		name     string
		fsys     memFS
		sentinel error
		line     int
		file     string
	}{
		{"cid mismatch", memFS{"base.vmdk": []byte(base), "base-flat.vmdk": flat,
			"c.vmdk": []byte(descText(1, 0x12, "vmfs", "base.vmdk", ext))}, ErrCIDMismatch, 5, "c.vmdk"},
		{"parentCID line damaged", memFS{"base.vmdk": []byte(base), "base-flat.vmdk": flat,
			"c.vmdk": []byte(strings.Replace(descText(1, 0x11, "vmfs", "base.vmdk", ext), "parentCID", "parentCIL", 1))}, ErrCIDMismatch, 8, "c.vmdk"},
		{"self loop", memFS{"base-flat.vmdk": flat,
			"c.vmdk": []byte(descText(1, 1, "vmfs", "c.vmdk", ext))}, ErrLoop, 8, "c.vmdk"},
		{"two-step loop", memFS{"base-flat.vmdk": flat,
			"a.vmdk": []byte(descText(1, 2, "vmfs", "b.vmdk", ext)),
			"b.vmdk": []byte(descText(2, 1, "vmfs", "a.vmdk", ext))}, ErrLoop, 8, "b.vmdk"},
		{"parent not found", memFS{"base-flat.vmdk": flat,
			"c.vmdk": []byte(descText(1, 1, "vmfs", "gone.vmdk", ext))}, ErrParentNotFound, 8, "c.vmdk"},
		{"no extents", memFS{"c.vmdk": []byte("# Disk DescriptorFile\nversion=1\nCID=1\ncreateType=\"vmfs\"\n")}, ErrCorrupt, 4, "c.vmdk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := "c.vmdk"
			if _, ok := tc.fsys["a.vmdk"]; ok {
				start = "a.vmdk"
			}
			_, err := Open(tc.fsys, start, Options{})
			var e *Error
			if !errors.Is(err, tc.sentinel) || !errors.As(err, &e) {
				t.Fatalf("err = %v, want %v", err, tc.sentinel)
			}
			if e.Line != tc.line || e.File != tc.file || e.Struct != "descriptor" {
				t.Errorf("err = %v: file %q line %d, want %q line %d", err, e.File, e.Line, tc.file, tc.line)
			}
		})
	}
}

func TestEmptyDescriptorNamesOffset(t *testing.T) {
	_, err := Open(memFS{"c.vmdk": nil}, "c.vmdk", Options{})
	var e *Error
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &e) || e.Off != 0 || !strings.Contains(err.Error(), "offset 0x0") {
		t.Fatalf("err = %v, want ErrCorrupt at offset 0x0", err)
	}
}
