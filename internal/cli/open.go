package cli

import (
	"fmt"
	"io/fs"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

// extentFlag names the other device files of a spanned volume.
func extentFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "extent", Aliases: []string{"e"}, Usage: "another device or image file of a spanned volume (repeat for each)"}
}

// deviceOpener, stored in App.Metadata under this key, replaces the opening
// of device files — tests use it to inject failing devices.
const deviceOpenerKey = "deviceOpener"

type deviceOpener func(paths []string) ([]vmfs.Device, error)

// openVolume opens VOLUME plus every --extent, read-only.
func openVolume(c *cli.Context, volume string) (*vmfs.Volume, error) {
	paths := append([]string{volume}, c.StringSlice("extent")...)
	if open, ok := c.App.Metadata[deviceOpenerKey].(deviceOpener); ok {
		devs, err := open(paths)
		if err != nil {
			return nil, err
		}
		return vmfs.Open(devs...)
	}
	v, err := vmfs.OpenFiles(paths...)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// volumeFS lets package vmdk open files on a VMFS volume.
func volumeFS(v *vmfs.Volume) vmdk.FS {
	return vmdk.FSFunc(func(name string) (vmdk.File, error) {
		f, err := v.Open(name)
		if err != nil {
			return nil, err
		}
		return f, nil
	})
}

// volumeVMDKs lists the .vmdk files of a volume.
func volumeVMDKs(v *vmfs.Volume) ([]string, error) {
	var names []string
	err := v.Walk(".", func(p string, info vmfs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Type == vmfs.TypeSystem && info.IsDir {
			return fs.SkipDir
		}
		if info.Type == vmfs.TypeRegular && strings.HasSuffix(strings.ToLower(p), ".vmdk") {
			names = append(names, p)
		}
		return nil
	})
	return names, err
}

// warnIfLive tells the user a volume image was taken from a running host.
func warnIfLive(c *cli.Context, v *vmfs.Volume) {
	if hosts := v.Info().LiveHosts; len(hosts) > 0 {
		fmt.Fprintf(c.App.ErrWriter, "warning: the volume was in use by host %s when this image was taken: a running VM's disk may be inconsistent (power the VM off or take a snapshot and convert its base); reading on, read-only\n", strings.Join(hosts, ", "))
	}
}
