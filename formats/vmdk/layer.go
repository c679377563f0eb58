package vmdk

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// maxEmbeddedDescriptor bounds the embedded descriptor read from a KDMV file
// (sectors).
const maxEmbeddedDescriptor = MaxDescriptorSize / 512

// notConvertible lists createTypes whose data is not in datastore files.
var notConvertible = map[string]bool{
	"vmfsrawdevicemap": true, "vmfspassthroughrawdevicemap": true, "vmfsrdm": true, "vmfsrdmp": true,
	"vmfsraw": true, "fulldevice": true, "partitioneddevice": true, "custom": true,
}

// notConvertibleWhy says what a createType of notConvertible is and where
// its data is.
func notConvertibleWhy(ct string) string {
	switch strings.ToLower(ct) {
	case "vmfsrawdevicemap", "vmfsrdm":
		return fmt.Sprintf("%q: a raw device mapping (virtual compatibility): the data is on the mapped LUN, not in the datastore; copy the LUN itself", ct)
	case "vmfspassthroughrawdevicemap", "vmfsrdmp":
		return fmt.Sprintf("%q: a raw device mapping (physical compatibility): the data is on the mapped LUN, not in the datastore; copy the LUN itself", ct)
	case "fulldevice", "partitioneddevice", "vmfsraw":
		return fmt.Sprintf("%q: a disk backed by a host's physical device, not by files", ct)
	}
	return fmt.Sprintf("%q", ct)
}

// openLayer opens the disk in file f (named name in fsys): it takes
// ownership of f and of every extent file it opens, registering them in d
// for Close.
func openLayer(d *Disk, fsys FS, name string, f File) (*layer, error) {
	d.files = append(d.files, f)
	var head [512]byte
	n, err := f.ReadAt(head[:], 0)
	if err != nil && err != io.EOF {
		return nil, ioError(name, "file header", 0, err)
	}
	l := &layer{info: Layer{Name: name, ParentCID: NoParentCID}}
	switch {
	case n >= 4 && string(head[:4]) == kdmvMagic:
		h, err := readKDMVHeader(name, f)
		if err != nil {
			return nil, err
		}
		desc, err := embeddedDescriptor(name, f, h)
		if err != nil {
			return nil, err
		}
		if h.capacity() == 0 && desc != nil {
			// A descriptor stored in a KDMV shell (qemu accepts it).
			return descriptorLayer(d, fsys, name, desc)
		}
		s, err := openKDMV(name, f, h)
		if err != nil {
			return nil, err
		}
		ct := "monolithicSparse"
		if s.compressed {
			ct = "streamOptimized"
		}
		if desc != nil {
			l.setDescriptor(desc)
		}
		if l.info.CreateType == "" {
			l.info.CreateType = ct
		}
		l.info.Provisioning = "sparse"
		l.addExtent(s, s.capacity)
		return l, nil
	case n >= 4 && string(head[:4]) == "COWD":
		s, err := openCOWD(name, f)
		if err != nil {
			return nil, err
		}
		l.info.CreateType, l.info.Provisioning = "vmfsSparse", "sparse"
		l.addExtent(s, s.capacity)
		return l, nil
	case n >= 8 && le64(head[:]) == seMagic:
		s, err := openSESparse(name, f)
		if err != nil {
			return nil, err
		}
		l.info.CreateType, l.info.Provisioning = "seSparse", "sparse"
		l.addExtent(s, s.capacity)
		return l, nil
	}
	if f.Size() > MaxDescriptorSize {
		return nil, &Error{File: name, Struct: "descriptor", Off: -1, Msg: fmt.Sprintf("a %d-byte file without a KDMV, COWD or seSparse magic is not a descriptor", f.Size()), Err: ErrCorrupt}
	}
	buf := make([]byte, f.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
		return nil, ioError(name, "descriptor", 0, err)
	}
	desc, err := ParseDescriptor(name, buf)
	if err != nil {
		return nil, err
	}
	return descriptorLayer(d, fsys, name, desc)
}

// embeddedDescriptor parses the descriptor stored in a KDMV file, if any.
func embeddedDescriptor(name string, f File, h *kdmvHeader) (*Descriptor, error) {
	off, size := h.descOffset(), h.descSize()
	if off == 0 || size == 0 {
		return nil, nil
	}
	fs := uint64(f.Size() / 512)
	if off >= fs {
		return nil, corrupt(name, "KDMV header", "descriptorOffset", 28, "sector %d outside the %d-byte file", off, f.Size())
	}
	size = min(size, fs-off, maxEmbeddedDescriptor)
	buf := make([]byte, size*512)
	if _, err := f.ReadAt(buf, int64(off)*512); err != nil && err != io.EOF {
		return nil, ioError(name, "embedded descriptor", int64(off)*512, err)
	}
	return ParseDescriptor(name, buf)
}

func (l *layer) setDescriptor(desc *Descriptor) {
	l.info.Descriptor = desc
	l.info.CreateType = desc.CreateType
	l.info.CID = desc.CID
	l.info.ParentCID = desc.ParentCID
	l.info.ParentHint = desc.ParentFileNameHint
	if v, _ := desc.DDBValue("thinProvisioned"); v == "1" {
		l.info.Provisioning = "thin"
	}
}

func (l *layer) addExtent(e extent, size int64) {
	start := l.info.Size
	l.starts = append(l.starts, start)
	l.ends = append(l.ends, start+size)
	l.exts = append(l.exts, e)
	l.info.Size = start + size
	if fe, ok := e.(*flatExtent); ok {
		l.flats = append(l.flats, fe)
	}
}

// descriptorLayer opens the extents a text descriptor names.
func descriptorLayer(d *Disk, fsys FS, name string, desc *Descriptor) (*layer, error) {
	l := &layer{info: Layer{Name: name}}
	l.setDescriptor(desc)
	ct := strings.ToLower(desc.CreateType)
	if notConvertible[ct] {
		return nil, &Error{File: name, Line: desc.Lines["createtype"], Struct: "descriptor", Field: "createType", Off: -1, Msg: notConvertibleWhy(desc.CreateType), Err: ErrNotConvertible}
	}
	if len(desc.Extents) == 0 {
		e := &Error{File: name, Line: desc.LineCount, Struct: "descriptor", Off: -1, Msg: "no extent line up to the last line", Err: ErrCorrupt}
		if desc.LineCount == 0 {
			e.Off, e.Msg = 0, "empty: no extent line"
		}
		return nil, e
	}
	if l.info.Provisioning == "" {
		switch {
		case strings.HasPrefix(ct, "vmfs") && !strings.Contains(ct, "sparse"):
			l.info.Provisioning = "thick"
		case strings.Contains(ct, "sparse") || ct == "streamoptimized":
			l.info.Provisioning = "sparse"
		default:
			l.info.Provisioning = "flat"
		}
	}
	opened := map[string]File{}
	open := func(x ExtentLine) (File, string, error) {
		p, err := extentPath(name, x.File)
		if err != nil {
			return nil, "", &Error{File: name, Line: x.Line, Struct: "extent", Off: -1, Msg: err.Error(), Err: ErrUnsupported}
		}
		if f, ok := opened[p]; ok {
			return f, p, nil
		}
		f, err := fsys.Open(p)
		if err != nil {
			return nil, "", &Error{File: name, Line: x.Line, Struct: "extent", Off: -1, Msg: fmt.Sprintf("open %q", p), Err: err}
		}
		d.files = append(d.files, f)
		opened[p] = f
		return f, p, nil
	}
	for _, x := range desc.Extents {
		bad := func(err error, format string, args ...any) error {
			return &Error{File: name, Line: x.Line, Struct: "extent", Field: x.Type, Off: -1, Msg: fmt.Sprintf(format, args...), Err: err}
		}
		if x.Access == "NOACCESS" {
			return nil, bad(ErrNotConvertible, "NOACCESS extent")
		}
		size := x.Sectors * 512
		switch x.Type {
		case "ZERO":
			l.addExtent(zeroExtent{}, size)
			continue
		case "VMFSRDM", "VMFSRAW", "VMFSRDMP":
			return nil, bad(ErrNotConvertible, "raw device mapping %q", x.File)
		case "FLAT", "VMFS", "SPARSE", "VMFSSPARSE", "SESPARSE":
		default:
			return nil, bad(ErrUnsupported, "unknown extent type")
		}
		if x.File == "" {
			return nil, bad(ErrSyntax, "no file name")
		}
		f, p, err := open(x)
		if err != nil {
			return nil, err
		}
		switch x.Type {
		case "FLAT", "VMFS":
			l.addExtent(&flatExtent{f: f, start: x.Offset * 512}, size)
		case "SESPARSE":
			s, err := openSESparse(p, f)
			if err != nil {
				return nil, err
			}
			l.addExtent(s, size)
		default: // SPARSE, VMFSSPARSE: KDMV or COWD by magic, as qemu does
			var m [4]byte
			if _, err := f.ReadAt(m[:], 0); err != nil {
				return nil, ioError(p, "sparse extent header", 0, err)
			}
			var s *sparse
			switch string(m[:]) {
			case "COWD":
				s, err = openCOWD(p, f)
			case kdmvMagic:
				var h *kdmvHeader
				if h, err = readKDMVHeader(p, f); err == nil {
					s, err = openKDMV(p, f, h)
				}
			default:
				err = corrupt(p, "sparse extent header", "magic", 0, "%q is neither KDMV nor COWD", m[:])
			}
			if err != nil {
				return nil, err
			}
			l.addExtent(s, size)
		}
	}
	return l, nil
}

// extentPath resolves an extent file name written in descriptor desc to a
// path in the same FS.
func extentPath(desc, file string) (string, error) {
	f := file
	if strings.ContainsRune(f, 0) {
		return "", fmt.Errorf("file name %q contains NUL", file)
	}
	if strings.Contains(f, `\`) || (len(f) >= 2 && f[1] == ':') {
		// A Windows path: the file is expected beside the descriptor.
		f = strings.ReplaceAll(f, `\`, "/")
		f = path.Base(f)
	}
	var p string
	switch {
	case strings.HasPrefix(f, "/vmfs/volumes/"):
		_, sub, _ := strings.Cut(strings.TrimPrefix(f, "/vmfs/volumes/"), "/")
		p = cleanRel(sub)
	case path.IsAbs(f):
		p = cleanRel(path.Join(path.Dir(desc), path.Base(f)))
	default:
		p = cleanRel(path.Join(path.Dir(desc), f))
	}
	if p == "" {
		return "", fmt.Errorf("file name %q leaves the datastore", file)
	}
	return p, nil
}
