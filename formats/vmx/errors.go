package vmx

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error returned by this package is an *Error that
// unwraps to one of these (or to the error of the FS), so callers can test
// with errors.Is.
var (
	// ErrSyntax reports a line that is not `key = "value"`, a comment or
	// blank.
	ErrSyntax = errors.New("syntax error")
	// ErrTooLarge reports a file larger than MaxFileSize.
	ErrTooLarge = errors.New("file too large")
	// ErrEncoding reports text in a character set this package does not
	// decode.
	ErrEncoding = errors.New("unsupported encoding")
)

// Error describes a failure in a .vmx or .vmsd file: the file (as named
// to Parse or to the FS), the 1-based line (0 when not about a line) and
// the key concerned.
type Error struct {
	File string // file name as given to Parse or the FS
	Line int    // 1-based line, 0 if not applicable
	Key  string // key as written, may be empty
	Msg  string // what is wrong, may be empty
	Err  error  // sentinel or underlying error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("vmx: ")
	if e.File != "" {
		fmt.Fprintf(&b, "%s: ", e.File)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, "key %q: ", e.Key)
	}
	if e.Msg != "" {
		b.WriteString(e.Msg)
		if e.Err != nil {
			b.WriteString(": ")
		}
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }
