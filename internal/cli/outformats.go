package cli

import (
	"io"
	"path/filepath"
	"sort"
	"strings"

	"crypto/rand"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/qcow2"
	"github.com/vmfs2vhd/vmfs2vhd/formats/raw"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhd"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vhdx"
)

// formatOptions are the writer options the CLI exposes.
type formatOptions struct {
	subformat   string // vhd: dynamic (default) or fixed
	azure       bool
	vhdCreator  string // vhd: creator application (≤ 4 bytes)
	clusterSize int64  // qcow2
	compat      string
	blockSize   int64 // vhdx
	sectorSize  int64
}

// outputFormat wires one format package into the CLI.
type outputFormat struct {
	name string
	exts []string
	// plan lays out the output; notes describe anything the user should
	// know (a size rounded up).
	plan func(size int64, ext []formats.Extent, o formatOptions) (formats.Layout, []string, error)
	// open reads an output back (for --verify).
	open func(r io.ReaderAt, size int64) (formats.Image, error)
}

var outputFormats = map[string]*outputFormat{}

func registerFormat(f *outputFormat) { outputFormats[f.name] = f }

func init() {
	registerFormat(&outputFormat{
		name: "raw", exts: []string{".raw", ".img", ".bin"},
		plan: func(size int64, ext []formats.Extent, o formatOptions) (formats.Layout, []string, error) {
			l, err := raw.Plan(size, ext)
			return l, nil, err
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return raw.Open(r, size) },
	})
	registerFormat(&outputFormat{
		name: "vhd", exts: []string{".vhd", ".vpc"},
		plan: func(size int64, ext []formats.Extent, o formatOptions) (formats.Layout, []string, error) {
			opts := vhd.Options{Azure: o.azure, CreatorApp: o.vhdCreator}
			switch o.subformat {
			case "", "dynamic":
				if o.azure {
					return nil, nil, usageErrorf("--azure makes a fixed VHD: drop --subformat dynamic")
				}
			case "fixed":
				opts.Fixed = true
			default:
				return nil, nil, usageErrorf("--subformat %q: VHD is dynamic or fixed", o.subformat)
			}
			l, err := vhd.Plan(size, ext, opts)
			if err != nil {
				return nil, nil, err
			}
			return l, l.Notes, nil
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return vhd.Open(r, size) },
	})
}

func init() {
	registerFormat(&outputFormat{
		name: "vhdx", exts: []string{".vhdx"},
		plan: func(size int64, ext []formats.Extent, o formatOptions) (formats.Layout, []string, error) {
			opts := vhdx.Options{BlockSize: o.blockSize, LogicalSectorSize: int(o.sectorSize)}
			rand.Read(opts.Identity[:]) // a fresh disk id for every output
			if o.subformat != "" && o.subformat != "dynamic" {
				return nil, nil, usageErrorf("--subformat %q: VHDX output is dynamic", o.subformat)
			}
			l, err := vhdx.Plan(size, ext, opts)
			return l, nil, err
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return vhdx.Open(r, size) },
	})
	registerFormat(&outputFormat{
		name: "qcow2", exts: []string{".qcow2", ".qcow"},
		plan: func(size int64, ext []formats.Extent, o formatOptions) (formats.Layout, []string, error) {
			if o.subformat != "" {
				return nil, nil, usageErrorf("--subformat: qcow2 has none (see --compat, --cluster-size)")
			}
			l, err := qcow2.Plan(size, ext, qcow2.Options{ClusterSize: o.clusterSize, Compat: o.compat})
			return l, nil, err
		},
		open: func(r io.ReaderAt, size int64) (formats.Image, error) { return qcow2.Open(r, size) },
	})
}

// formatNames lists the registered formats.
func formatNames() string {
	var names []string
	for n := range outputFormats {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// formatFor picks the format from -f or from the output's extension.
func formatFor(name, output string) (*outputFormat, error) {
	if name != "" {
		f := outputFormats[strings.ToLower(name)]
		if f == nil {
			return nil, usageErrorf("format %q: want one of %s", name, formatNames())
		}
		return f, nil
	}
	if output == "-" {
		return nil, usageErrorf("-f/--format is required when writing to stdout")
	}
	ext := strings.ToLower(filepath.Ext(output))
	for _, f := range outputFormats {
		for _, e := range f.exts {
			if e == ext {
				return f, nil
			}
		}
	}
	return nil, usageErrorf("cannot tell the format from %q: give -f/--format (%s)", output, formatNames())
}

// extOf is the default extension of a format, for batch output names.
func (f *outputFormat) ext() string { return f.exts[0] }
