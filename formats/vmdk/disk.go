package vmdk

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
)

// DefaultMaxDepth is the longest chain Open follows (ESXi allows 32 layers).
const DefaultMaxDepth = 32

// Options control Open.
type Options struct {
	// IgnoreCID opens a chain even when a child's parentCID differs from
	// its parent's CID.
	IgnoreCID bool
	// MaxDepth caps the number of layers (leaf and base included);
	// 0 means DefaultMaxDepth.
	MaxDepth int
	// Volumes maps a VMFS volume UUID or label, as it appears in
	// "/vmfs/volumes/<volume>/dir/x.vmdk" parent hints and extent names, to
	// the FS holding that datastore. A volume not in the map is looked up
	// as "dir/x.vmdk" in the FS of the file that names it.
	Volumes map[string]FS
}

// Layer describes one disk of a chain.
type Layer struct {
	Name         string // descriptor (or sparse file) path in its FS
	Volume       string // key of Options.Volumes the layer was found through, "" for the FS passed to Open
	CreateType   string
	CID          uint32
	ParentCID    uint32      // NoParentCID for a base disk
	ParentHint   string      // parentFileNameHint as written, "" for a base disk
	Provisioning string      // "thin" (ddb.thinProvisioned = 1), "thick" (other vmfs flat), "sparse", "flat"
	Size         int64       // virtual size in bytes
	Descriptor   *Descriptor // nil for a COWD/seSparse file opened without descriptor
}

// layer is one opened disk of a chain.
type layer struct {
	info   Layer
	starts []int64 // virtual start of each extent
	ends   []int64
	exts   []extent
	flats  []*flatExtent
}

func (l *layer) size() int64 { return l.info.Size }

// mapAt answers for virtual offset off of this layer alone.
func (l *layer) mapAt(off, max int64, read bool) (mapping, error) {
	if off >= l.size() {
		return mapping{kind: formats.Hole, n: max}, nil
	}
	i := sort.Search(len(l.ends), func(i int) bool { return l.ends[i] > off })
	rel := off - l.starts[i]
	return l.exts[i].mapAt(rel, min(max, l.ends[i]-off), read)
}

// Disk is a VMDK — one descriptor's extents, or a snapshot chain flattened —
// as a formats.Image. ReadAt and Extent are safe for concurrent use.
type Disk struct {
	layers []*layer // 0 = leaf
	size   int64
	files  []File // closed by Close; nil for views
	mu     sync.Mutex
	closed bool
}

var _ formats.Image = (*Disk)(nil)

// Size returns the virtual size of the disk (the leaf's size).
func (d *Disk) Size() int64 { return d.size }

// Depth returns the number of layers in the chain.
func (d *Disk) Depth() int { return len(d.layers) }

// Chain returns the paths of the chain's descriptors, leaf first.
func (d *Disk) Chain() []string {
	out := make([]string, len(d.layers))
	for i, l := range d.layers {
		out[i] = l.info.Name
	}
	return out
}

// Layers describes the chain's layers, leaf first.
func (d *Disk) Layers() []Layer {
	out := make([]Layer, len(d.layers))
	for i, l := range d.layers {
		out[i] = l.info
	}
	return out
}

// View returns the disk as it is at chain point i (0 = the leaf, Depth()-1 =
// the base): layer i flattened over its parents. The view shares d's files;
// it is valid until d is closed, and its Close does nothing.
func (d *Disk) View(i int) (*Disk, error) {
	if i < 0 || i >= len(d.layers) {
		return nil, fmt.Errorf("vmdk: chain point %d of a %d-layer chain: %w", i, len(d.layers), formats.ErrOutOfRange)
	}
	return &Disk{layers: d.layers[i:], size: d.layers[i].size()}, nil
}

// Close closes the files of the chain.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, f := range d.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// maxExtentQuery bounds the run one Extent call examines, so a query costs
// a bounded number of table entries (128 Ki COWD grains).
const maxExtentQuery = 64 << 20

// resolve applies the chain rule to [off, off+max): the topmost layer with
// Data or Zero wins, a Hole falls through to the parent, and a Hole at the
// base stays a Hole (it reads as zeros).
func (d *Disk) resolve(off, max int64, read bool) (mapping, error) {
	for _, l := range d.layers {
		m, err := l.mapAt(off, max, read)
		if err != nil {
			return mapping{}, err
		}
		if m.n <= 0 || m.n > max {
			return mapping{}, fmt.Errorf("vmdk: %s: internal error: run of %d bytes for a %d-byte query", l.info.Name, m.n, max)
		}
		if m.kind != formats.Hole {
			return m, nil
		}
		max = m.n
	}
	return mapping{kind: formats.Hole, n: max}, nil
}

// ReadAt reads the flattened disk. A run that one layer stores contiguously
// is read with one ReadAt of that layer's file.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vmdk: read at negative offset %d: %w", off, formats.ErrOutOfRange)
	}
	if off >= d.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := int64(len(p))
	var eof error
	if n > d.size-off {
		n, eof = d.size-off, io.EOF
	}
	for done := int64(0); done < n; {
		m, err := d.resolve(off+done, n-done, true)
		if err != nil {
			return int(done), err
		}
		chunk := p[done : done+m.n]
		if m.kind == formats.Data {
			if err := m.read(chunk); err != nil {
				return int(done), err
			}
		} else {
			clear(chunk)
		}
		done += m.n
	}
	return int(n), eof
}

// Locate says where the disk's bytes [off, off+n), or a prefix of them, are
// stored (formats.Locator): in the file of the layer that holds them, as
// that file locates them in turn (a VMFS file names its device; a local
// file is itself). Zero and hole runs, compressed grains, bytes past the end
// of an extent file and files that cannot locate their bytes are not
// located.
func (d *Disk) Locate(off, n int64) (formats.Location, error) {
	if off < 0 || n <= 0 || off >= d.size {
		return formats.Location{}, fmt.Errorf("vmdk: locate [%d, +%d) of a %d-byte disk: %w", off, n, d.size, formats.ErrOutOfRange)
	}
	m, err := d.resolve(off, min(n, d.size-off), true)
	if err != nil {
		return formats.Location{}, err
	}
	lf, ok := m.f.(formats.Locator)
	if m.kind != formats.Data || m.sp != nil || !ok || m.foff >= m.f.Size() {
		return formats.Location{Len: m.n}, nil
	}
	return lf.Locate(m.foff, min(m.n, m.f.Size()-m.foff))
}

// Extent returns the run of one kind starting at off, from metadata only:
// Data where some layer stores the bytes, Zero where the topmost layer that
// answers says zero (zeroed grain, ZERO extent, to-be-zeroed VMFS block),
// Hole where no layer has the range allocated.
func (d *Disk) Extent(off int64) (formats.Extent, error) {
	if off < 0 || off >= d.size {
		return formats.Extent{}, fmt.Errorf("vmdk: extent at %d of a %d-byte disk: %w", off, d.size, formats.ErrOutOfRange)
	}
	m, err := d.resolve(off, min(d.size-off, maxExtentQuery), false)
	if err != nil {
		return formats.Extent{}, err
	}
	return formats.Extent{Off: off, Len: m.n, Kind: m.kind}, nil
}

// Open opens the disk named by name in fsys — a text descriptor, a hosted
// sparse (KDMV) file with an embedded descriptor, or a lone COWD or
// seSparse file — and its parents, and returns the chain flattened.
func Open(fsys FS, name string, opts Options) (*Disk, error) {
	maxDepth := opts.MaxDepth
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	d := &Disk{}
	seen := map[string]bool{}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	curFS, vol := fsys, ""
	f, err := fsys.Open(name)
	if err != nil {
		return nil, &Error{File: name, Off: -1, Msg: "open", Err: err}
	}
	for {
		key := vol + "\x00" + path.Clean(name)
		if seen[key] {
			f.Close()
			return nil, d.hintError("chain "+strings.Join(d.Chain(), " -> ")+" -> "+name, ErrLoop)
		}
		seen[key] = true
		if len(d.layers) == maxDepth {
			f.Close()
			return nil, d.hintError(fmt.Sprintf("more than %d layers", maxDepth), ErrTooDeep)
		}
		l, err := openLayer(d, curFS, name, f)
		if err != nil {
			return nil, err
		}
		l.info.Volume = vol
		d.layers = append(d.layers, l)
		hint := l.info.ParentHint
		if hint == "" {
			break
		}
		var pname string
		curFS, vol, pname, f, err = findParent(curFS, vol, name, hint, opts)
		if err != nil {
			var e *Error
			if errors.As(err, &e) && e.File == name && e.Field == "parentFileNameHint" && l.info.Descriptor != nil {
				e.Line = l.info.Descriptor.Lines["parentfilenamehint"]
			}
			return nil, err
		}
		name = pname
	}
	// CID checks, now that every layer is open.
	for i := 0; i+1 < len(d.layers); i++ {
		c, p := d.layers[i].info, d.layers[i+1].info
		if !opts.IgnoreCID && c.ParentCID != p.CID {
			e := &Error{File: c.Name, Struct: "descriptor", Field: "parentCID", Off: -1,
				Msg: fmt.Sprintf("parentCID %08x, but parent %s has CID %08x", c.ParentCID, p.Name, p.CID), Err: ErrCIDMismatch}
			if desc := c.Descriptor; desc != nil {
				e.Line = desc.Lines["parentcid"]
				if !desc.HasParentCID {
					// Point at the line that names the parent.
					e.Line = desc.Lines["parentfilenamehint"]
					e.Msg = fmt.Sprintf("no parentCID line, but a parent (%s, CID %08x)", p.Name, p.CID)
				}
			}
			return nil, e
		}
	}
	for _, fe := range d.layers[len(d.layers)-1].flats {
		fe.base = true
	}
	d.size = d.layers[0].size()
	ok = true
	return d, nil
}

// hintError reports a chain problem (a loop, too many layers) at the
// parentFileNameHint of the last layer opened: the link that leads there.
func (d *Disk) hintError(msg string, sentinel error) *Error {
	last := d.layers[len(d.layers)-1].info
	e := &Error{File: last.Name, Struct: "descriptor", Field: "parentFileNameHint", Off: -1, Msg: msg, Err: sentinel}
	if last.Descriptor != nil {
		e.Line = last.Descriptor.Lines["parentfilenamehint"]
	} else {
		e.Struct, e.Field = "", ""
	}
	return e
}

// findParent resolves a parentFileNameHint written in child (a file of the
// FS reached through volume vol) and opens the parent.
func findParent(fsys FS, vol, child, hint string, opts Options) (FS, string, string, File, error) {
	type cand struct {
		fsys FS
		vol  string
		name string
	}
	var cands []cand
	add := func(f FS, v, n string) {
		if n = cleanRel(n); n != "" {
			cands = append(cands, cand{f, v, n})
		}
	}
	dir := path.Dir(child)
	h := hint
	windows := strings.Contains(h, `\`) || (len(h) >= 2 && h[1] == ':')
	if windows {
		h = strings.ReplaceAll(h, `\`, "/")
		if len(h) >= 2 && h[1] == ':' {
			h = h[2:]
		}
	}
	switch {
	case strings.HasPrefix(h, "/vmfs/volumes/"):
		rest := strings.TrimPrefix(h, "/vmfs/volumes/")
		v, sub, _ := strings.Cut(rest, "/")
		if vf, ok := opts.Volumes[v]; ok {
			add(vf, v, sub)
		}
		add(fsys, vol, sub)
		add(fsys, vol, path.Join(dir, path.Base(sub)))
	case path.IsAbs(h) || windows:
		add(fsys, vol, path.Join(dir, path.Base(h)))
		if pd := path.Base(path.Dir(h)); pd != "/" && pd != "." {
			add(fsys, vol, path.Join(dir, "..", pd, path.Base(h)))
		}
	default:
		add(fsys, vol, path.Join(dir, h))
		add(fsys, vol, path.Join(dir, path.Base(h)))
	}
	var tried []string
	for _, c := range cands {
		if slices.Contains(tried, c.vol+":"+c.name) {
			continue
		}
		tried = append(tried, c.vol+":"+c.name)
		f, err := c.fsys.Open(c.name)
		if err == nil {
			return c.fsys, c.vol, c.name, f, nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrInvalid) {
			return nil, "", "", nil, &Error{File: c.name, Off: -1, Msg: fmt.Sprintf("open parent (hint %q in %s)", hint, child), Err: err}
		}
	}
	for i, t := range tried {
		tried[i] = strings.TrimPrefix(t, ":")
	}
	return nil, "", "", nil, &Error{File: child, Struct: "descriptor", Field: "parentFileNameHint", Off: -1,
		Msg: fmt.Sprintf("%q (tried %s)", hint, strings.Join(tried, ", ")), Err: ErrParentNotFound}
}

// cleanRel cleans a slash path relative to an FS root; it returns "" for a
// path that leaves the root.
func cleanRel(p string) string {
	p = path.Clean(strings.TrimPrefix(p, "/"))
	if p == ".." || strings.HasPrefix(p, "../") || !fs.ValidPath(p) {
		return ""
	}
	return p
}
