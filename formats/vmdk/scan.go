package vmdk

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"sort"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// DiskInfo describes one virtual disk found by Scan: a chain seen from its
// leaf.
type DiskInfo struct {
	Path        string `json:"path"` // leaf descriptor
	VirtualSize int64  `json:"virtual_size"`
	Allocated   int64  `json:"allocated"` // bytes of the flattened disk that map to stored data
	// Provisioning is the base's "thin" (it has unallocated blocks), "lazy"
	// (to-be-zeroed blocks), "eager" (fully allocated) or "flat"/"sparse"
	// for hosted disks; for a chain, the top delta's format: "cowd",
	// "sesparse" or "sparse".
	Provisioning string   `json:"provisioning"`
	Chain        []string `json:"chain"` // descriptor paths, leaf first
	Problems     []string `json:"problems"`
}

// maxDescriptor bounds what Scan reads of a candidate text descriptor.
const maxDescriptor = 1 << 20

// Scan opens every candidate name in fsys that is a disk — a text
// descriptor or a hosted sparse file — and returns one DiskInfo per chain,
// from its leaf. Files that some descriptor names as an extent, and
// descriptors that are the parent of another, are not listed on their own.
// A chain that cannot be opened is listed with its problem (missing
// parent, CID mismatch, loop, unsupported extent); Scan itself fails only
// when fsys does.
func Scan(fsys FS, names []string) ([]DiskInfo, error) {
	type cand struct {
		name string
		desc *Descriptor
	}
	extents := map[string]bool{}
	var cands []cand
	for _, name := range names {
		kind, desc, err := probe(fsys, name)
		if err != nil {
			return nil, err
		}
		switch kind {
		case "descriptor":
			cands = append(cands, cand{name, desc})
			for _, e := range desc.Extents {
				if e.File != "" {
					extents[path.Join(path.Dir(name), e.File)] = true
				}
			}
		case "sparse":
			cands = append(cands, cand{name, nil})
		}
	}
	parents := map[string]bool{}
	type opened struct {
		info DiskInfo
		ok   bool
	}
	results := map[string]*opened{}
	for _, c := range cands {
		if extents[c.name] && c.desc == nil {
			continue // a sparse extent of some descriptor
		}
		info := DiskInfo{Path: c.name, Problems: []string{}}
		d, err := Open(fsys, c.name, Options{})
		if errors.Is(err, ErrCIDMismatch) {
			info.Problems = append(info.Problems, err.Error())
			d, err = Open(fsys, c.name, Options{IgnoreCID: true})
		}
		if err != nil {
			msg := err.Error()
			if errors.Is(err, ErrParentNotFound) {
				msg = "orphaned delta: " + msg
			}
			info.Problems = append(info.Problems, msg)
			info.Chain = []string{c.name}
			if c.desc != nil {
				info.VirtualSize = c.desc.Size()
				info.Provisioning = deltaKind(c.desc.CreateType)
			}
			results[c.name] = &opened{info: info}
			continue
		}
		info.Chain = d.Chain()
		for _, p := range info.Chain[1:] {
			parents[p] = true
		}
		info.VirtualSize = d.Size()
		info.Provisioning, err = provisioning(d)
		if err == nil {
			info.Allocated, err = formats.Allocated(d)
		}
		if err != nil {
			info.Problems = append(info.Problems, err.Error())
		}
		d.Close()
		results[c.name] = &opened{info: info, ok: true}
	}
	var out []DiskInfo
	for name, r := range results {
		if parents[name] {
			continue
		}
		out = append(out, r.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// probe tells a text descriptor ("descriptor", parsed) from a hosted sparse
// disk ("sparse") and from anything else ("").
func probe(fsys FS, name string) (string, *Descriptor, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return "", nil, fmt.Errorf("vmdk: scan %s: %w", name, err)
	}
	defer f.Close()
	head := make([]byte, min(f.Size(), maxDescriptor))
	n, err := f.ReadAt(head, 0)
	if n < len(head) {
		return "", nil, fmt.Errorf("vmdk: scan %s: %w", name, err)
	}
	switch {
	case bytes.HasPrefix(head, []byte("KDMV")):
		return "sparse", nil, nil
	case bytes.HasPrefix(head, []byte("COWD")), bytes.HasPrefix(head, []byte{0xBE, 0xBA, 0xFE, 0xCA}):
		return "", nil, nil // a delta extent: its descriptor lists it
	}
	if f.Size() > maxDescriptor || bytes.IndexByte(bytes.TrimRight(head, "\x00"), 0) >= 0 {
		return "", nil, nil
	}
	d, err := ParseDescriptor(name, head)
	if err != nil {
		return "", nil, nil // not a descriptor (a flat extent, a text file)
	}
	return "descriptor", d, nil
}

// provisioning describes a disk as DiskInfo.Provisioning does.
func provisioning(d *Disk) (string, error) {
	layers := d.Layers()
	if len(layers) > 1 {
		top := layers[0]
		if top.Descriptor != nil {
			return deltaKind(top.Descriptor.CreateType), nil
		}
		return "sparse", nil
	}
	switch layers[0].Provisioning {
	case "thin", "thick":
		// A VMFS flat base: its own allocation map tells.
		var holes, zero bool
		err := formats.Walk(d, 0, d.Size(), func(e formats.Extent) error {
			holes = holes || e.Kind == formats.Hole
			zero = zero || e.Kind == formats.Zero
			return nil
		})
		switch {
		case err != nil:
			return "", err
		case holes || layers[0].Provisioning == "thin":
			return "thin", nil
		case zero:
			return "lazy", nil
		}
		return "eager", nil
	}
	return layers[0].Provisioning, nil
}

func deltaKind(createType string) string {
	switch createType {
	case "vmfsSparse":
		return "cowd"
	case "seSparse":
		return "sesparse"
	}
	return "sparse"
}
