package cli

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
)

// source is a virtual disk opened for conversion.
type source struct {
	img   formats.Image
	name  string   // what the user named
	chain []string // descriptors, leaf (or the chosen point) first
	vol   string   // for provenance records: the volume UUID, or a local disk's directory (update.go)
	close func() error
}

// chainFlags select a point of a snapshot chain.
func chainFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "snapshot", Usage: "convert this point of the chain (a descriptor name such as vm1-000001.vmdk) instead of the leaf"},
		&cli.BoolFlag{Name: "base", Usage: "convert the base disk of the chain instead of the leaf"},
		&cli.BoolFlag{Name: "ignore-cid", Usage: "read a chain even when a child's parentCID does not match its parent's CID"},
	}
}

// openDisk opens descriptor name in fsys and selects the chain point the
// flags ask for.
func openDisk(c *cli.Context, fsys vmdk.FS, name, display string) (*source, error) {
	d, err := vmdk.Open(fsys, name, vmdk.Options{IgnoreCID: c.Bool("ignore-cid")})
	if err != nil {
		return nil, err
	}
	chain := d.Chain()
	point := 0
	switch {
	case c.Bool("base") && c.String("snapshot") != "":
		d.Close()
		return nil, usageErrorf("--base and --snapshot exclude each other")
	case c.Bool("base"):
		point = d.Depth() - 1
	case c.String("snapshot") != "":
		want := c.String("snapshot")
		point = -1
		for i, p := range chain {
			if p == want || path.Base(p) == want || strings.TrimSuffix(path.Base(p), ".vmdk") == want {
				point = i
			}
		}
		if point < 0 {
			d.Close()
			return nil, usageErrorf("--snapshot %q is not in the chain of %s (%s)", want, display, strings.Join(chain, " → "))
		}
	}
	var img formats.Image = d
	if point > 0 {
		v, err := d.View(point)
		if err != nil {
			d.Close()
			return nil, err
		}
		img = v
	}
	return &source{img: img, name: display, chain: chain[point:], close: d.Close}, nil
}

// openLocalDisk opens a VMDK on the local filesystem.
func openLocalDisk(c *cli.Context, p string) (*source, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, err
	}
	s, err := openDisk(c, vmdk.DirFS(filepath.Dir(abs)), filepath.Base(abs), p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	s.vol = localRecordID(filepath.Dir(abs))
	return s, nil
}
