package vmdk

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxDescriptorSize bounds the descriptor text read from a file (qemu uses
// the same limit).
const MaxDescriptorSize = 1 << 20

// Descriptor is a parsed VMDK text descriptor (image-formats.md §1).
//
// Header keys are matched case-insensitively; Header and DDB keep every
// key=value line with the key in lower case (DDB keys keep their "ddb."
// prefix).
type Descriptor struct {
	Version            int
	Encoding           string // header "encoding" or "ddb.encoding"; "" means UTF-8
	CID                uint32
	ParentCID          uint32
	HasCID             bool // CID line present
	HasParentCID       bool // parentCID line present
	CreateType         string
	ParentFileNameHint string // "" when the disk has no parent
	Extents            []ExtentLine
	Header             map[string]string
	DDB                map[string]string
	// Lines gives the 1-based line of each header and ddb key (lower
	// case), so that errors about a field can say where it is.
	Lines map[string]int
	// LineCount is the number of lines in the descriptor.
	LineCount int
}

// ExtentLine is one extent of a descriptor, in the descriptor's order.
type ExtentLine struct {
	Line    int    // 1-based line number in the descriptor
	Access  string // RW, RDONLY or NOACCESS (upper case)
	Sectors int64  // size in 512-byte sectors
	Type    string // FLAT, VMFS, ZERO, SPARSE, VMFSSPARSE, SESPARSE, VMFSRDM, VMFSRAW … (upper case)
	File    string // file name as written (decoded to UTF-8), "" for ZERO
	Offset  int64  // start sector in File (FLAT); 0 otherwise
	Extra   []string
}

// NoParentCID is the parentCID of a disk without a parent.
const NoParentCID = 0xffffffff

// DDBValue returns the value of a ddb key, matched case-insensitively, with
// or without its "ddb." prefix.
func (d *Descriptor) DDBValue(key string) (string, bool) {
	k := strings.ToLower(key)
	if !strings.HasPrefix(k, "ddb.") {
		k = "ddb." + k
	}
	v, ok := d.DDB[k]
	return v, ok
}

// Size returns the sum of the extents' sizes in bytes.
func (d *Descriptor) Size() int64 {
	var n int64
	for _, e := range d.Extents {
		n += e.Sectors * 512
	}
	return n
}

// maxSectors keeps byte sizes of extents inside int64 even when summed.
const maxSectors = 1 << 45 // 16 PiB

// ParseDescriptor parses descriptor text. name is used in error messages
// only. The parser is tolerant of what real descriptors contain — comments
// anywhere, CRLF line ends, NUL padding after the text, spaces around '=',
// any key case, quoted file names with spaces and UTF-8, extent lines with
// extra fields, legacy single-byte encodings — and reports anything else
// with the file name, line number and what was expected.
func ParseDescriptor(name string, data []byte) (*Descriptor, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	if len(data) > MaxDescriptorSize {
		return nil, &Error{File: name, Struct: "descriptor", Off: -1, Msg: "larger than 1 MiB", Err: ErrUnsupported}
	}
	d := &Descriptor{
		ParentCID: NoParentCID,
		Header:    map[string]string{},
		DDB:       map[string]string{},
		Lines:     map[string]int{},
	}
	synErr := func(line int, format string, args ...any) error {
		e := corrupt(name, "", "", -1, format, args...)
		e.Line, e.Err = line, ErrSyntax
		return e
	}
	lines := bytes.Split(data, []byte{'\n'})
	d.LineCount = len(lines)
	if len(lines[len(lines)-1]) == 0 {
		d.LineCount-- // the text ends with a newline
	}
	for i, raw := range lines {
		ln := i + 1
		s := strings.TrimSpace(string(raw)) // also drops the CR of CRLF
		if s == "" || s[0] == '#' {
			continue
		}
		if isExtentLine(s) {
			e, err := parseExtentLine(s)
			if err != "" {
				return nil, synErr(ln, "extent line %s: %s", quoteLine(s), err)
			}
			e.Line = ln
			d.Extents = append(d.Extents, e)
			continue
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return nil, synErr(ln, "%s: expected key=value or an extent line (RW|RDONLY|NOACCESS sectors TYPE \"file\" [offset])", quoteLine(s))
		}
		key := strings.TrimSpace(s[:eq])
		if strings.ContainsAny(key, " \t\"") {
			return nil, synErr(ln, "%s: key %q contains blanks or quotes", quoteLine(s), key)
		}
		val, ok := unquote(strings.TrimSpace(s[eq+1:]))
		if !ok {
			return nil, synErr(ln, "%s: expected a value in double quotes or a bare token", quoteLine(s))
		}
		lk := strings.ToLower(key)
		d.Lines[lk] = ln
		if strings.HasPrefix(lk, "ddb.") {
			d.DDB[lk] = val
			continue
		}
		d.Header[lk] = val
		switch lk {
		case "version":
			v, err := strconv.Atoi(val)
			if err != nil || v < 0 {
				return nil, synErr(ln, "version %q: expected a decimal number", val)
			}
			d.Version = v
		case "cid", "parentcid":
			v, err := strconv.ParseUint(val, 16, 32)
			if err != nil {
				return nil, synErr(ln, "%s %q: expected 8 hex digits", key, val)
			}
			if lk == "cid" {
				d.CID, d.HasCID = uint32(v), true
			} else {
				d.ParentCID, d.HasParentCID = uint32(v), true
			}
		case "createtype":
			d.CreateType = val
		case "parentfilenamehint":
			d.ParentFileNameHint = val
		case "encoding":
			d.Encoding = val
		}
	}
	if d.Encoding == "" {
		d.Encoding = d.DDB["ddb.encoding"]
	}
	// Decode names written in a legacy code page.
	for i := range d.Extents {
		f, err := decodeName(d.Encoding, d.Extents[i].File)
		if err != "" {
			return nil, &Error{File: name, Line: d.Extents[i].Line, Struct: "descriptor", Off: -1, Msg: "extent file name: " + err, Err: ErrUnsupported}
		}
		d.Extents[i].File = f
	}
	if d.ParentFileNameHint != "" {
		f, err := decodeName(d.Encoding, d.ParentFileNameHint)
		if err != "" {
			return nil, &Error{File: name, Line: d.Lines["parentfilenamehint"], Struct: "descriptor", Field: "parentFileNameHint", Off: -1, Msg: err, Err: ErrUnsupported}
		}
		d.ParentFileNameHint = f
	}
	return d, nil
}

// quoteLine quotes a descriptor line for an error message, shortened.
func quoteLine(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strconv.Quote(s)
}

// unquote returns the value of a header or ddb value: text between double
// quotes (no escapes exist), or a bare token.
func unquote(v string) (string, bool) {
	if v == "" {
		return "", true
	}
	if v[0] == '"' {
		if len(v) < 2 || v[len(v)-1] != '"' {
			return "", false
		}
		return v[1 : len(v)-1], true
	}
	return v, true
}

var accessModes = map[string]bool{"RW": true, "RDONLY": true, "NOACCESS": true}

// isExtentLine reports whether s starts with an access mode and a number.
func isExtentLine(s string) bool {
	f := strings.Fields(s)
	if len(f) < 2 || !accessModes[strings.ToUpper(f[0])] {
		return false
	}
	c := f[1][0]
	return c >= '0' && c <= '9' || c == '-'
}

// parseExtentLine parses `access sectors type ["file" [offset [extra…]]]`.
// It returns an explanation instead of an error.
func parseExtentLine(s string) (ExtentLine, string) {
	var e ExtentLine
	rest := s
	next := func() string {
		rest = strings.TrimLeft(rest, " \t")
		i := strings.IndexAny(rest, " \t")
		if i < 0 {
			i = len(rest)
		}
		tok := rest[:i]
		rest = rest[i:]
		return tok
	}
	e.Access = strings.ToUpper(next())
	n, err := strconv.ParseInt(next(), 10, 64)
	if err != nil || n <= 0 || n > maxSectors {
		return e, "expected a positive sector count"
	}
	e.Sectors = n
	e.Type = strings.ToUpper(next())
	if e.Type == "" {
		return e, "expected an extent type after the sector count"
	}
	rest = strings.TrimLeft(rest, " \t")
	if rest == "" {
		return e, ""
	}
	if rest[0] == '"' {
		j := strings.IndexByte(rest[1:], '"')
		if j < 0 {
			return e, "file name has no closing quote"
		}
		e.File = rest[1 : 1+j]
		rest = rest[2+j:]
		if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
			return e, "expected a blank after the quoted file name"
		}
	} else {
		e.File = next()
	}
	if e.File == "" {
		return e, "empty file name"
	}
	if off := next(); off != "" {
		o, err := strconv.ParseInt(off, 10, 64)
		if err != nil || o < 0 || o > maxSectors {
			return e, "expected a start sector (decimal) after the file name"
		}
		e.Offset = o
	}
	for t := next(); t != ""; t = next() {
		e.Extra = append(e.Extra, t)
	}
	return e, ""
}

// decodeName converts a name from the descriptor's encoding to UTF-8.
// Valid UTF-8 is kept as it is; windows-1252 and ISO-8859-1 names are
// decoded; other code pages with non-ASCII bytes are refused.
func decodeName(enc, s string) (string, string) {
	if utf8.ValidString(s) {
		return s, ""
	}
	switch strings.ToLower(strings.ReplaceAll(enc, "_", "-")) {
	case "windows-1252", "cp1252", "iso-8859-1", "latin1", "iso8859-1":
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c >= 0x80 && c < 0xa0 && !strings.HasPrefix(strings.ToLower(enc), "iso") && !strings.HasPrefix(strings.ToLower(enc), "latin") {
				b.WriteRune(cp1252[c-0x80])
			} else {
				b.WriteRune(rune(c))
			}
		}
		return b.String(), ""
	}
	return "", "not valid UTF-8 and encoding " + strconv.Quote(enc) + " is not supported"
}

// cp1252 maps windows-1252 bytes 0x80–0x9f to Unicode (undefined bytes map
// to the C1 control of the same value, as Windows does).
var cp1252 = [32]rune{
	0x20ac, 0x81, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8d, 0x017d, 0x8f,
	0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x9d, 0x017e, 0x0178,
}
