package cli

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/convert"
	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/raw"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "describe a VMFS volume, or a file on it",
		ArgsUsage: "VOLUME [PATH]",
		Description: `Without PATH: version, label, UUID, block size, capacity, extents and partition offsets, and
whether a host had the volume mounted. With PATH: the file's type, size, allocated bytes, block
size and address form; --map adds its extent map (data, zero = to-be-zeroed, hole).

EXAMPLES:
   vmfs2vhd info /dev/sdb
   vmfs2vhd info --map -e lun2.img lun1.img vm1/vm1-flat.vmdk`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "map", Usage: "with PATH: list the file's data, zero and hole runs"},
			extentFlag(), directFlag(),
		},
		Action: runInfo,
	}
}

func runInfo(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if c.NArg() < 1 || c.NArg() > 2 {
		return usageErrorf("info: want VOLUME [PATH]")
	}
	v, err := openVolume(c, c.Args().First())
	if err != nil {
		return err
	}
	defer v.Close()
	w := c.App.Writer
	if c.NArg() == 1 {
		info := v.Info()
		free, ferr := v.Free()
		if c.Bool("json") {
			out := struct {
				vmfs.Info
				Free *int64 `json:"free,omitempty"` // bytes; absent where unknown (VMFS6)
			}{Info: info}
			if ferr == nil {
				out.Free = &free
			}
			return printJSON(c, out)
		}
		fmt.Fprintf(w, "VMFS%d (FS %d.%d, LVM %d.%d)%s\n", info.Version, info.FSMajor, info.FSMinor, info.LVMMajor, info.LVMMinor, map[bool]string{true: ", VMFS-L"}[info.Local])
		fmt.Fprintf(w, "label:       %s\nUUID:        %s\n", info.Label, info.UUID)
		if info.LVUUID != "" {
			fmt.Fprintf(w, "LV UUID:     %s\n", info.LVUUID)
		}
		fmt.Fprintf(w, "block size:  %s (sub-block %s)\ncapacity:    %s\n", formatSize(info.BlockSize), formatSize(info.SubBlockSize), formatSize(info.Capacity))
		if ferr == nil {
			fmt.Fprintf(w, "free:        %s (%d blocks)\n", formatSize(free), free/info.BlockSize)
		} else {
			fmt.Fprintf(w, "free:        unknown (%v)\n", ferr)
		}
		for i, e := range info.Extents {
			state := ""
			if e.Missing {
				state = " MISSING"
			}
			fmt.Fprintf(w, "extent %d:    %s at partition offset %d, logical [%d, +%d)%s\n", i, e.Device, e.PartitionOffset, e.Logical, e.Length, state)
		}
		if len(info.LiveHosts) > 0 {
			fmt.Fprintf(w, "in use:      yes — live heartbeat of host %s (the image was taken from a mounted volume)\n", strings.Join(info.LiveHosts, ", "))
		} else {
			fmt.Fprintf(w, "in use:      no live heartbeat\n")
		}
		return nil
	}
	p := c.Args().Get(1)
	f, err := v.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	st := f.Stat()
	alloc, err := f.Allocated()
	if err != nil {
		return err
	}
	out := fileInfoJSON{Name: st.Name, Path: st.Path, Type: typeName(st), Size: st.Size, Allocated: alloc,
		Mode: fmt.Sprintf("%04o", st.Mode&0o7777), MTime: st.MTime.UTC().Format(time.RFC3339),
		BlockSize: st.BlockSize, Layout: st.Layout(), FD: fmt.Sprintf("0x%08x", st.FD)}
	if c.Bool("map") {
		err := formats.Walk(f, 0, f.Size(), func(e formats.Extent) error {
			out.Map = append(out.Map, mapRun{Off: e.Off, Len: e.Len, Kind: e.Kind.String()})
			return nil
		})
		if err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return printJSON(c, out)
	}
	fmt.Fprintf(w, "path:       %s\ntype:       %s\nsize:       %d (%s)\nallocated:  %d (%s)\nblock size: %s\naddressing: %s\nFD:         %s\nmtime:      %s\n",
		out.Path, out.Type, out.Size, formatSize(out.Size), out.Allocated, formatSize(out.Allocated), formatSize(out.BlockSize), out.Layout, out.FD, out.MTime)
	if c.Bool("map") {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "\nOFFSET\tLENGTH\tKIND\n")
		for _, r := range out.Map {
			fmt.Fprintf(tw, "%d\t%d\t%s\n", r.Off, r.Len, r.Kind)
		}
		return tw.Flush()
	}
	return nil
}

type mapRun struct {
	Off  int64  `json:"off"`
	Len  int64  `json:"len"`
	Kind string `json:"kind"`
}

type fileInfoJSON struct {
	Name      string   `json:"name"`
	Path      string   `json:"path"`
	Type      string   `json:"type"`
	Size      int64    `json:"size"`
	Allocated int64    `json:"allocated"`
	Mode      string   `json:"mode"`
	MTime     string   `json:"mtime"`
	BlockSize int64    `json:"block_size,omitempty"`
	Layout    string   `json:"layout,omitempty"`
	FD        string   `json:"fd,omitempty"`
	Map       []mapRun `json:"map,omitempty"`
}

func typeName(st vmfs.FileInfo) string {
	switch st.Type {
	case vmfs.TypeDir:
		return "dir"
	case vmfs.TypeSymlink:
		return "symlink"
	case vmfs.TypeRDM:
		return "rdm"
	case vmfs.TypeSystem:
		return "system"
	}
	return "file"
}

func printJSON(c *cli.Context, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.App.Writer, "%s\n", b)
	return err
}

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list a directory of a VMFS volume",
		ArgsUsage: "VOLUME [PATH]",
		Description: `Lists PATH (default: the root). -l shows mode, links, size, allocated bytes and mtime (UTC);
-R recurses; --json prints an array of {name, path, type, size, allocated, mode, mtime}.

EXAMPLE:
   vmfs2vhd ls -lR datastore1.img vm1`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "long", Aliases: []string{"l"}, Usage: "long listing"},
			&cli.BoolFlag{Name: "recursive", Aliases: []string{"R"}, Usage: "list subdirectories too"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			extentFlag(), directFlag(),
		},
		Action: runLs,
	}
}

func runLs(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if c.NArg() < 1 || c.NArg() > 2 {
		return usageErrorf("ls: want VOLUME [PATH]")
	}
	v, err := openVolume(c, c.Args().First())
	if err != nil {
		return err
	}
	defer v.Close()
	root := strings.Trim(c.Args().Get(1), "/")
	if root == "" {
		root = "."
	}
	type entry struct {
		st    vmfs.FileInfo
		alloc int64
	}
	allocOf := func(st vmfs.FileInfo) (int64, error) {
		if !c.Bool("long") && !c.Bool("json") {
			return 0, nil
		}
		f, err := v.Open(st.Path)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		return f.Allocated()
	}
	var all []fileInfoJSON
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 1, ' ', tabwriter.AlignRight)
	// A damaged directory entry can point back at an ancestor: enter
	// every directory once, as vmfs.Walk does.
	entered := map[uint32]bool{}
	var list func(dir string, header bool) error
	list = func(dir string, header bool) error {
		if st, err := v.Stat(dir); err == nil {
			if entered[st.FD] {
				fmt.Fprintf(c.App.ErrWriter, "warning: %s: directory FD 0x%08x was listed already (a directory cycle): not entered again\n", dir, st.FD)
				return nil
			}
			entered[st.FD] = true
		}
		ents, err := v.ReadDir(dir)
		if err != nil {
			return err
		}
		if header && !c.Bool("json") {
			w.Flush()
			fmt.Fprintf(c.App.Writer, "\n%s:\n", dir)
		}
		var subdirs []string
		for _, st := range ents {
			alloc, err := allocOf(st)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				all = append(all, fileInfoJSON{Name: st.Name, Path: st.Path, Type: typeName(st), Size: st.Size, Allocated: alloc,
					Mode: fmt.Sprintf("%04o", st.Mode&0o7777), MTime: st.MTime.UTC().Format(time.RFC3339)})
			} else if c.Bool("long") {
				fmt.Fprintf(w, "%s\t %d\t %d\t %d\t %s\t %s\n", st.FileMode(), st.NLink, st.Size, alloc, st.MTime.UTC().Format("2006-01-02 15:04:05"), displayName(st))
			} else {
				w.Flush()
				fmt.Fprintln(c.App.Writer, st.Name)
			}
			if st.IsDir && st.Type == vmfs.TypeDir {
				subdirs = append(subdirs, st.Path)
			}
		}
		if c.Bool("recursive") {
			for _, d := range subdirs {
				if err := list(d, true); err != nil {
					return err
				}
			}
		}
		return nil
	}
	st, err := v.Stat(root)
	if err != nil {
		return err
	}
	if !st.IsDir {
		alloc, err := allocOf(st)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return printJSON(c, []fileInfoJSON{{Name: st.Name, Path: st.Path, Type: typeName(st), Size: st.Size, Allocated: alloc,
				Mode: fmt.Sprintf("%04o", st.Mode&0o7777), MTime: st.MTime.UTC().Format(time.RFC3339)}})
		}
		fmt.Fprintln(c.App.Writer, st.Path)
		return nil
	}
	if err := list(root, false); err != nil {
		return err
	}
	if c.Bool("json") {
		if all == nil {
			all = []fileInfoJSON{}
		}
		return printJSON(c, all)
	}
	return w.Flush()
}

func displayName(st vmfs.FileInfo) string {
	return st.Name
}

func catCommand() *cli.Command {
	return &cli.Command{
		Name:      "cat",
		Usage:     "write a file of a VMFS volume to stdout",
		ArgsUsage: "VOLUME PATH",
		Description: `Writes the exact bytes of PATH to stdout: holes and to-be-zeroed blocks as zeros (without
reading them), data with large parallel reads.

EXAMPLE:
   vmfs2vhd cat datastore1.img vm1/vm1.vmdk`,
		Flags: []cli.Flag{extentFlag(), directFlag(), &cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Usage: "reads in flight"},
			&cli.BoolFlag{Name: "rescue", Usage: "go on past read errors: zeros for what cannot be read, the ranges on stderr (exit 5)"}},
		Action: runCat,
	}
}

func runCat(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if c.NArg() != 2 {
		return usageErrorf("cat: want VOLUME PATH")
	}
	v, err := openVolume(c, c.Args().First())
	if err != nil {
		return err
	}
	defer v.Close()
	f, err := v.Open(c.Args().Get(1))
	if err != nil {
		return err
	}
	defer f.Close()
	if st := f.Stat(); st.IsDir {
		return fmt.Errorf("%s: is a directory (FD 0x%08x): %w", c.Args().Get(1), st.FD, fs.ErrInvalid)
	}
	var bad convert.BadRanges
	var exts []formats.Extent
	if c.Bool("rescue") {
		exts = convert.RescueExtents(f, func(off, n int64, err error) {
			fmt.Fprintf(c.App.ErrWriter, "warning: allocation map unreadable for [%d, +%d): %v\n", off, n, err)
		})
	} else if exts, err = formats.Extents(f); err != nil {
		return err
	}
	l, err := raw.Plan(f.Size(), exts)
	if err != nil {
		return err
	}
	opts := convert.Options{Jobs: c.Int("jobs"), Rescue: c.Bool("rescue"), BadRange: bad.Add}
	if _, err = convert.Stream(c.Context, c.App.Writer, l, f, opts); err != nil {
		return err
	}
	if list := bad.List(); len(list) > 0 {
		if err := reportBadRanges(c, c.Args().Get(1), list); err != nil {
			return err
		}
		return &exitError{code: exitBadRange, err: fmt.Errorf("%d unreadable ranges were written as zeros", len(list))}
	}
	return nil
}
