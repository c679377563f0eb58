package vmfs_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

// Open a datastore image read-only, list a directory, and read a thin
// disk's allocation map without reading its data.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "datastore.img")
	if _, err := testimages.Build(testimages.IssueSpec(5), img); err != nil {
		log.Fatal(err)
	}

	vol, err := vmfs.OpenFiles(img) // for a spanned volume: every extent, in any order
	if err != nil {
		log.Fatal(err)
	}
	defer vol.Close()
	info := vol.Info()
	fmt.Printf("VMFS%d, %d MiB blocks\n", info.Version, info.BlockSize>>20)

	entries, err := vol.ReadDir("vm1")
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e.Name, e.Size)
	}

	f, err := vol.Open("vm1/vm1-flat.vmdk")
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	var data, holes int64
	formats.Walk(f, 0, f.Size(), func(e formats.Extent) error {
		switch e.Kind {
		case formats.Data:
			data += e.Len
		case formats.Hole:
			holes += e.Len
		}
		return nil
	})
	fmt.Printf("thin disk: %d MiB data, %d MiB unallocated\n", data>>20, holes>>20)
	// Output:
	// VMFS5, 1 MiB blocks
	// vm1-000001-delta.vmdk 3416064
	// vm1-000001.vmdk 396
	// vm1-000002-delta.vmdk 3083776
	// vm1-000002.vmdk 403
	// vm1-flat.vmdk 67108864
	// vm1.vmdk 485
	// thin disk: 31 MiB data, 33 MiB unallocated
}
