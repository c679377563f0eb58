package testimages

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
)

// A 2 TiB thin disk with 10 MiB of data costs its data on disk, not its
// virtual size: the image is sparse and only the data and metadata are
// written. VMFS5 needs double indirection for it, VMFS6 single.
func TestLargeThinDisk(t *testing.T) {
	for _, ver := range []int{5, 6} {
		t.Run(map[int]string{5: "vmfs5", 6: "vmfs6"}[ver], func(t *testing.T) {
			const size = 2 << 40
			out := filepath.Join(t.TempDir(), "big.img")
			m, err := Build(Spec{VMFS: ver, Disks: []DiskSpec{{Path: "big/big.vmdk", Type: Thin, Size: size, Fill: 100 * float64(10<<20) / size}}}, out)
			if err != nil {
				t.Fatal(err)
			}
			var flat ManifestFile
			for _, f := range m.Files {
				if f.Path == "big/big-flat.vmdk" {
					flat = f
				}
			}
			wantLayout := map[int]string{5: "double", 6: "pointer"}[ver]
			if flat.Size != size || flat.Layout != wantLayout {
				t.Fatalf("flat extent: size %d layout %q, want %d %q", flat.Size, flat.Layout, int64(size), wantLayout)
			}
			if m.Disks[0].Allocated < 10<<20 || m.Disks[0].Allocated > 40<<20 {
				t.Errorf("allocated %d bytes, want about 10 MiB (whole 1 MiB blocks)", m.Disks[0].Allocated)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(out, &st); err != nil {
				t.Fatal(err)
			}
			if used := st.Blocks * 512; used > 64<<20 {
				t.Errorf("image uses %d bytes on disk, want ≤ 64 MiB", used)
			}
			// The oracle sees the file at its full size.
			tool := debugTool(ver)
			ls := string(oracle.Run(t, tool, out, "ls", "-l", "/big"))
			if !strings.Contains(ls, " 2199023255552 ") {
				t.Errorf("%s ls -l /big does not show the 2 TiB extent:\n%s", tool, ls)
			}
			os.Remove(out)
		})
	}
}
