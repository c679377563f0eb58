package vmx

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxFileSize bounds the .vmx and .vmsd files Parse accepts. Real files are
// a few KiB (a .vmsd with a hundred snapshots stays under 100 KiB); 4 MiB
// leaves room for guestinfo blobs while keeping a corrupt or wrong file
// from being read whole.
const MaxFileSize = 4 << 20

// File is a parsed .vmx or .vmsd file: VMware's "dictionary" format of
// `key = "value"` lines.
//
// Keys are case-insensitive (VMware matches them so; products write
// "memsize", "memSize" or "MemSize"); a key given twice keeps its last
// value, as VMware does when it reads the file. Values are decoded to
// UTF-8: first the |XX escapes (a byte in hex, used by VMware for '"', '|',
// '#' and control characters), then the file's .encoding.
type File struct {
	// Name is the name given to Parse, used in errors and problems.
	Name string
	// Encoding is the .encoding value as written ("" when absent, which
	// VMware reads as the host's code page; this package then keeps valid
	// UTF-8 and decodes anything else as windows-1252).
	Encoding string
	// Warnings lists tolerated oddities (duplicate keys, values that were
	// not valid in the declared encoding), each naming file and line.
	Warnings []string

	entries map[string]Entry
	order   []string
}

// Entry is one key of a File.
type Entry struct {
	Key   string // as written (last occurrence)
	Value string // decoded to UTF-8, escapes resolved
	Line  int    // 1-based line of the last occurrence
}

// Parse reads a .vmx or .vmsd file from r. name is used in errors only.
// Files larger than MaxFileSize are refused with ErrTooLarge.
func Parse(r io.Reader, name string) (*File, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, &Error{File: name, Msg: "read failed", Err: err}
	}
	return ParseBytes(data, name)
}

// ParseBytes parses the text of a .vmx or .vmsd file. It does not modify
// data. The grammar, as VMware products write and read it:
//
//   - one `key = value` per line; spaces around '=' are optional;
//   - value is "text in double quotes" (VMware always writes this) or a
//     bare token; a '#' after the value starts a comment;
//   - lines that are blank or start with '#' are ignored ("#!" first lines
//     of hosted VMs included);
//   - LF or CRLF line ends, an optional UTF-8 byte order mark, NUL padding
//     after the text;
//   - |XX in a value is the byte with hex value XX (VMware writes |22 for
//     '"', |7C for '|', |23 for '#', |0A for a newline);
//   - `.encoding = "…"` names the character set of the values: UTF-8,
//     windows-1252 and ISO-8859-1 (with their aliases) are decoded; any
//     other is refused with ErrEncoding when a value is not plain ASCII.
//
// A line that is none of these is an ErrSyntax error naming the file and
// the line.
func ParseBytes(data []byte, name string) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, &Error{File: name, Msg: fmt.Sprintf("larger than %d MiB", MaxFileSize>>20), Err: ErrTooLarge}
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	f := &File{Name: name, entries: map[string]Entry{}}
	type rawEntry struct {
		key  string
		val  []byte
		line int
	}
	var raws []rawEntry
	seen := map[string]int{}
	for i, line := range bytes.Split(data, []byte{'\n'}) {
		ln := i + 1
		s := bytes.TrimSpace(line) // also drops the CR of CRLF
		if len(s) == 0 || s[0] == '#' {
			continue
		}
		eq := bytes.IndexByte(s, '=')
		if eq <= 0 {
			return nil, &Error{File: name, Line: ln, Msg: quoteLine(s) + ": expected key = \"value\"", Err: ErrSyntax}
		}
		key := string(bytes.TrimSpace(s[:eq]))
		if key == "" || strings.ContainsAny(key, " \t\"#|") || !utf8.ValidString(key) {
			return nil, &Error{File: name, Line: ln, Msg: fmt.Sprintf("%s: key %s contains blanks, quotes or non-UTF-8 bytes", quoteLine(s), quoteLine([]byte(key))), Err: ErrSyntax}
		}
		val, msg := rawValue(bytes.TrimSpace(s[eq+1:]))
		if msg != "" {
			return nil, &Error{File: name, Line: ln, Key: key, Msg: msg, Err: ErrSyntax}
		}
		lk := strings.ToLower(key)
		if prev, ok := seen[lk]; ok {
			f.Warnings = append(f.Warnings, fmt.Sprintf("%s: line %d: key %q repeats line %d; the last value is used", name, ln, key, prev))
		}
		seen[lk] = ln
		raws = append(raws, rawEntry{key, unescape(val), ln})
	}
	// .encoding applies to the whole file, wherever the line is.
	for _, r := range raws {
		if strings.EqualFold(r.key, ".encoding") {
			f.Encoding = string(r.val)
		}
	}
	dec, known := charset(f.Encoding)
	for _, r := range raws {
		v, ok := decode(dec, r.val)
		if !ok {
			if !known {
				return nil, &Error{File: name, Line: r.line, Key: r.key, Msg: fmt.Sprintf("value is not ASCII and encoding %q is not supported (UTF-8, windows-1252, ISO-8859-1 are)", f.Encoding), Err: ErrEncoding}
			}
			// Declared UTF-8 but is not: Workstation on Windows wrote such
			// files before it declared its encoding; read the bytes as
			// windows-1252 rather than fail.
			v, _ = decode(csWindows1252, r.val)
			f.Warnings = append(f.Warnings, fmt.Sprintf("%s: line %d: key %q: value is not valid %s; read as windows-1252", name, r.line, r.key, displayEncoding(f.Encoding)))
		}
		lk := strings.ToLower(r.key)
		if _, ok := f.entries[lk]; !ok {
			f.order = append(f.order, lk)
		}
		f.entries[lk] = Entry{Key: r.key, Value: v, Line: r.line}
	}
	return f, nil
}

// Get returns the value of key, matched case-insensitively.
func (f *File) Get(key string) (string, bool) {
	e, ok := f.entries[strings.ToLower(key)]
	return e.Value, ok
}

// Value returns the value of key, or "" when it is absent.
func (f *File) Value(key string) string {
	v, _ := f.Get(key)
	return v
}

// Entry returns the entry of key, matched case-insensitively.
func (f *File) Entry(key string) (Entry, bool) {
	e, ok := f.entries[strings.ToLower(key)]
	return e, ok
}

// Keys returns the keys in lower case, in the order of their first
// appearance.
func (f *File) Keys() []string { return append([]string(nil), f.order...) }

// Len returns the number of distinct keys.
func (f *File) Len() int { return len(f.order) }

// where names the file and line of key for problem messages.
func (f *File) where(key string) string {
	if e, ok := f.Entry(key); ok {
		return fmt.Sprintf("%s line %d", f.Name, e.Line)
	}
	return f.Name
}

// rawValue returns the bytes of a value: between double quotes, or a bare
// token ended by a comment. It returns an explanation instead of an error.
func rawValue(s []byte) ([]byte, string) {
	if len(s) == 0 || s[0] == '#' {
		return nil, ""
	}
	if s[0] != '"' {
		if i := bytes.IndexByte(s, '#'); i >= 0 {
			s = bytes.TrimSpace(s[:i])
		}
		if bytes.IndexByte(s, '"') >= 0 {
			return nil, "unquoted value contains a double quote"
		}
		return s, ""
	}
	j := bytes.IndexByte(s[1:], '"')
	if j < 0 {
		return nil, "value has no closing double quote"
	}
	v, rest := s[1:1+j], bytes.TrimSpace(s[2+j:])
	if len(rest) > 0 && rest[0] != '#' {
		return nil, fmt.Sprintf("text %s after the closing double quote", quoteLine(rest))
	}
	return v, ""
}

// unescape resolves |XX escapes. A '|' not followed by two hex digits is
// kept as it is.
func unescape(v []byte) []byte {
	if bytes.IndexByte(v, '|') < 0 {
		return v
	}
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] == '|' && i+2 < len(v) {
			if hi, ok1 := unhex(v[i+1]); ok1 {
				if lo, ok2 := unhex(v[i+2]); ok2 {
					out = append(out, hi<<4|lo)
					i += 2
					continue
				}
			}
		}
		out = append(out, v[i])
	}
	return out
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// quoteLine quotes a line for an error message, shortened.
func quoteLine(s []byte) string {
	if len(s) > 80 {
		return strconv.Quote(string(s[:80])) + "…"
	}
	return strconv.Quote(string(s))
}

type charsetID int

const (
	csUTF8 charsetID = iota // also the default: valid UTF-8 kept, else windows-1252
	csWindows1252
	csLatin1
	csOther
)

// charset maps an .encoding value to a decoder; known is false for a
// character set this package cannot decode.
func charset(enc string) (cs charsetID, known bool) {
	switch strings.ToLower(strings.ReplaceAll(strings.TrimSpace(enc), "_", "-")) {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
		return csUTF8, true
	case "windows-1252", "cp1252", "cp-1252", "windows1252":
		return csWindows1252, true
	case "iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1":
		return csLatin1, true
	}
	return csOther, false
}

func displayEncoding(enc string) string {
	if enc == "" {
		return "UTF-8"
	}
	return enc
}

// decode converts v from cs to UTF-8. ok is false for bytes cs cannot
// represent (invalid UTF-8, or non-ASCII in an unknown character set).
func decode(cs charsetID, v []byte) (string, bool) {
	switch cs {
	case csUTF8:
		return string(v), utf8.Valid(v)
	case csWindows1252, csLatin1:
		var b strings.Builder
		for _, c := range v {
			if c >= 0x80 && c < 0xa0 && cs == csWindows1252 {
				b.WriteRune(cp1252[c-0x80])
			} else {
				b.WriteRune(rune(c))
			}
		}
		return b.String(), true
	}
	for _, c := range v {
		if c >= 0x80 {
			return "", false
		}
	}
	return string(v), true
}

// cp1252 maps windows-1252 bytes 0x80–0x9f to Unicode (the five undefined
// bytes map to the C1 control of the same value, as Windows does).
var cp1252 = [32]rune{
	0x20ac, 0x81, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8d, 0x017d, 0x8f,
	0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x9d, 0x017e, 0x0178,
}
