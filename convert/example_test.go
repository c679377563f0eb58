package convert_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/vmfs2vhd/vmfs2vhd/convert"
	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/qcow2"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

// Open a VMFS datastore, list its disks, and convert one — a snapshot
// chain, flattened — to qcow2 in one pass.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	// A sample datastore; with a real one, pass the device or image files.
	img := filepath.Join(dir, "datastore.img")
	if _, err := testimages.Build(testimages.Sample(6), img); err != nil {
		log.Fatal(err)
	}

	vol, err := vmfs.OpenFiles(img) // read-only
	if err != nil {
		log.Fatal(err)
	}
	defer vol.Close()
	fmt.Println("VMFS version:", vol.Info().Version)

	fsys := vmdk.FSFunc(func(name string) (vmdk.File, error) {
		f, err := vol.Open(name)
		if err != nil {
			return nil, err
		}
		return f, nil
	})
	disks, err := vmdk.Scan(fsys, []string{"vm1/vm1.vmdk", "vm1/vm1-000001.vmdk", "vm1/vm1-000002.vmdk"})
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range disks {
		fmt.Println("disk:", d.Path, d.VirtualSize>>20, "MiB, chain of", len(d.Chain))
	}

	disk, err := vmdk.Open(fsys, "vm1/vm1-000002.vmdk", vmdk.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer disk.Close()
	extents, err := formats.Extents(disk) // metadata only: no data is read
	if err != nil {
		log.Fatal(err)
	}
	layout, err := qcow2.Plan(disk.Size(), extents, qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	out, err := convert.CreateOutput(filepath.Join(dir, "vm1.qcow2"), false)
	if err != nil {
		log.Fatal(err)
	}
	defer out.Abort() // removes the partial file on any failure
	if _, err := convert.Write(context.Background(), out, layout, disk, convert.Options{}); err != nil {
		log.Fatal(err)
	}
	if err := out.Commit(layout.FileSize()); err != nil {
		log.Fatal(err)
	}

	// Read it back and compare.
	f, _ := os.Open(filepath.Join(dir, "vm1.qcow2"))
	defer f.Close()
	back, err := qcow2.Open(f, layout.FileSize())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("verify:", convert.Verify(context.Background(), disk, back, convert.Options{}))
	// Output:
	// VMFS version: 6
	// disk: vm1/vm1-000002.vmdk 64 MiB, chain of 3
	// verify: <nil>
}
