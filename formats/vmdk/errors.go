package vmdk

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error returned by this package is an *Error (or
// wraps one) that unwraps to one of these, so callers can test with
// errors.Is.
var (
	// ErrSyntax reports a descriptor line that does not follow the grammar.
	ErrSyntax = errors.New("descriptor syntax error")
	// ErrCorrupt reports on-disk metadata that is inconsistent or out of
	// range (a header field, a directory or table entry, a marker).
	ErrCorrupt = errors.New("corrupt metadata")
	// ErrUnsupported reports a valid feature this package does not read
	// (an unknown version, extent type or grain size).
	ErrUnsupported = errors.New("unsupported")
	// ErrNotConvertible reports a disk whose data is not in files this
	// package can read: raw device mappings, NOACCESS extents, physical
	// device disks.
	ErrNotConvertible = errors.New("disk data is not stored in the datastore")
	// ErrDirty reports a seSparse delta whose journal must be replayed.
	ErrDirty = errors.New("delta was not closed cleanly (journal replay needed)")
	// ErrCIDMismatch reports a child whose parentCID differs from its
	// parent's CID (the parent was modified after the child was created).
	ErrCIDMismatch = errors.New("parent content ID mismatch")
	// ErrParentNotFound reports a parentFileNameHint no candidate path
	// resolves to.
	ErrParentNotFound = errors.New("parent disk not found")
	// ErrLoop reports a snapshot chain that refers back to one of its own
	// layers.
	ErrLoop = errors.New("snapshot chain loops")
	// ErrTooDeep reports a snapshot chain longer than Options.MaxDepth.
	ErrTooDeep = errors.New("snapshot chain too deep")
	// ErrClosed reports use of a Disk after Close.
	ErrClosed = errors.New("disk is closed")
)

// Error describes a failure at a place in a file: the file (as named to the
// FS), the structure and field concerned, and where — a byte offset for
// binary structures (-1 when not applicable) or a line for descriptors.
type Error struct {
	File   string // file name as given to the FS
	Struct string // "descriptor", "COWD header", "grain table", …
	Field  string // field or entry, may be empty
	Off    int64  // absolute byte offset in File, -1 if not applicable
	Line   int    // descriptor line (1-based), 0 if not applicable
	Msg    string // what is wrong, may be empty
	Err    error  // sentinel or underlying error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("vmdk: ")
	if e.File != "" {
		fmt.Fprintf(&b, "%s: ", e.File)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Struct != "" {
		b.WriteString(e.Struct)
		if e.Field != "" {
			fmt.Fprintf(&b, " %s", e.Field)
		}
		if e.Off >= 0 {
			fmt.Fprintf(&b, " at offset %#x", e.Off)
		}
		b.WriteString(": ")
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

// corrupt builds an ErrCorrupt *Error.
func corrupt(file, structure, field string, off int64, format string, args ...any) *Error {
	return &Error{File: file, Struct: structure, Field: field, Off: off, Msg: fmt.Sprintf(format, args...), Err: ErrCorrupt}
}

// unsupported builds an ErrUnsupported *Error.
func unsupported(file, structure, field string, off int64, format string, args ...any) *Error {
	return &Error{File: file, Struct: structure, Field: field, Off: off, Msg: fmt.Sprintf(format, args...), Err: ErrUnsupported}
}

// ioError wraps an I/O error from reading a structure.
func ioError(file, structure string, off int64, err error) *Error {
	return &Error{File: file, Struct: structure, Off: off, Msg: "read failed", Err: err}
}
