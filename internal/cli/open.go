package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs/device"
)

// extentFlag names the other device files of a spanned volume.
func extentFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "extent", Aliases: []string{"e"}, Usage: "another device or image file of a spanned volume (repeat for each); with label:/uuid:, the files to search instead of the attached devices"}
}

// directFlag asks for reads around the page cache; every command that takes
// VOLUME has it.
func directFlag() cli.Flag {
	return &cli.BoolFlag{Name: "direct", Usage: "Linux: read devices and images with O_DIRECT (large LUNs without filling the page cache; falls back to cached reads where the file system refuses it); macOS: F_NOCACHE; Windows: no effect"}
}

// deviceOptions are the device-layer options of the command's flags.
func deviceOptions(c *cli.Context) device.Options {
	return device.Options{Direct: c.Bool("direct")}
}

// deviceOpener, stored in App.Metadata under this key, replaces the opening
// of device files — tests use it to inject failing devices.
const deviceOpenerKey = "deviceOpener"

type deviceOpener func(paths []string) ([]vmfs.Device, error)

// openVolume opens VOLUME plus every --extent, read-only. VOLUME may also
// be label:NAME or uuid:UUID (FS or LVM UUID): the attached devices — or
// the files given with -e — are scanned and the volume is opened with all
// of its extents.
func openVolume(c *cli.Context, volume string) (*vmfs.Volume, error) {
	paths := append([]string{volume}, c.StringSlice("extent")...)
	if kind, value, ok := volumeSelector(volume); ok {
		var err error
		if paths, err = resolveVolume(c, kind, value); err != nil {
			return nil, err
		}
	}
	if open, ok := c.App.Metadata[deviceOpenerKey].(deviceOpener); ok {
		devs, err := open(paths)
		if err != nil {
			return nil, err
		}
		return vmfs.Open(devs...)
	}
	dopts := deviceOptions(c)
	var devs []*device.Device
	for _, p := range paths {
		d, err := device.Open(p, dopts)
		if err != nil {
			for _, d := range devs {
				d.Close()
			}
			return nil, err
		}
		if dopts.Direct && !d.Direct() && runtime.GOOS == "linux" {
			fmt.Fprintf(c.App.ErrWriter, "note: %s: the file system does not support O_DIRECT; reading it through the page cache\n", p)
		}
		devs = append(devs, d)
	}
	return vmfs.OpenDevices(vmfs.Options{}, devs...)
}

// volumeSelector recognizes label:NAME and uuid:UUID (unless a file of
// that name exists).
func volumeSelector(volume string) (kind, value string, ok bool) {
	for _, k := range []string{"label", "uuid"} {
		if v, found := strings.CutPrefix(volume, k+":"); found {
			if _, err := os.Stat(volume); err == nil {
				return "", "", false
			}
			return k, v, true
		}
	}
	return "", "", false
}

// resolveVolume scans the -e files, or every attached device, for the
// volume with that label or UUID and returns its devices.
func resolveVolume(c *cli.Context, kind, value string) ([]string, error) {
	r, err := vmfs.Scan(vmfs.ScanOptions{Device: deviceOptions(c)}, c.StringSlice("extent")...)
	if err != nil {
		return nil, err
	}
	var matches []vmfs.ScannedVolume
	unnamed := 0
	for _, v := range r.Volumes {
		switch {
		case kind == "label" && v.Label == value,
			kind == "uuid" && value != "" && (strings.EqualFold(v.UUID, value) || strings.EqualFold(v.LVUUID, value)):
			matches = append(matches, v)
		case v.Version == 0:
			unnamed++
		}
	}
	sel := kind + ":" + value
	switch len(matches) {
	case 1:
		m := matches[0]
		if !m.Complete() {
			var miss []string
			for _, x := range m.Missing {
				miss = append(miss, fmt.Sprintf("extent %d (logical bytes %d, +%d)", x.Index, x.Logical, x.Length))
			}
			return nil, fmt.Errorf("%s: volume %s is spanned over %d devices; not found: %s%s", sel, m.UUID, m.Extents[0].Count, strings.Join(miss, ", "), scanHint(c, r))
		}
		return m.Paths(), nil
	case 0:
		var found []string
		for _, v := range r.Volumes {
			if v.Version != 0 {
				found = append(found, fmt.Sprintf("label:%s (uuid:%s)", v.Label, v.UUID))
			}
		}
		msg := fmt.Sprintf("%s: no such volume among %d devices scanned", sel, len(r.Volumes)+len(r.Other))
		if len(found) > 0 {
			msg += "; found " + strings.Join(found, ", ")
		}
		if unnamed > 0 {
			msg += fmt.Sprintf("; %d volume(s) could not be named (their first extent is missing)", unnamed)
		}
		return nil, errors.New(msg + scanHint(c, r))
	default:
		var list []string
		for _, m := range matches {
			list = append(list, fmt.Sprintf("uuid:%s (VMFS%d on %s)", m.UUID, m.Version, strings.Join(m.Paths(), ", ")))
		}
		return nil, &exitError{code: exitUsage, err: fmt.Errorf("%s: %d volumes match: %s; name one with uuid:UUID", sel, len(matches), strings.Join(list, "; "))}
	}
}

// scanHint tells where a scan looked and which devices it could not read.
func scanHint(c *cli.Context, r *vmfs.ScanResult) string {
	var denied []string
	hint := ""
	for _, o := range r.Other {
		var ae *device.AccessError
		if errors.As(o.Err, &ae) {
			denied = append(denied, o.Device)
			hint = ae.Hint
		}
	}
	s := ""
	if len(c.StringSlice("extent")) == 0 {
		s = " (scanned the attached devices; name image files with -e)"
	}
	if len(denied) > 0 {
		s += fmt.Sprintf("; could not read %s: %s", strings.Join(denied, ", "), hint)
	}
	return s
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
