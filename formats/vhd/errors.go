package vhd

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors; every error of this package unwraps to one of them.
var (
	// ErrCorrupt reports a VHD whose structures are invalid or point
	// outside the file.
	ErrCorrupt = errors.New("corrupt VHD")
	// ErrUnsupported reports a valid VHD that this package does not read
	// (differencing disks).
	ErrUnsupported = errors.New("unsupported VHD")
	// ErrTooLarge reports a virtual size beyond what a VHD may hold
	// (MaxSize, or MaxAzureSize for Azure output).
	ErrTooLarge = errors.New("disk too large for VHD")
	// ErrInvalid reports an invalid argument to Plan or Open: a negative
	// size, an extent list out of order or out of range, a bad option.
	ErrInvalid = errors.New("invalid argument")
)

// Error is the error type of this package. It names the structure and field
// concerned and, where there is one, the absolute byte offset in the VHD
// file, and unwraps to one of the sentinel errors.
type Error struct {
	Struct string // "footer", "dynamic header", "BAT", "block", "extent list", "options" …
	Field  string // the field concerned, or ""
	Off    int64  // absolute file offset of the structure or field, or -1
	Msg    string // what is wrong
	Err    error  // a sentinel: ErrCorrupt, ErrUnsupported, ErrTooLarge, ErrInvalid
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("vhd: ")
	b.WriteString(e.Struct)
	if e.Off >= 0 {
		fmt.Fprintf(&b, " at 0x%x", e.Off)
	}
	if e.Field != "" {
		b.WriteString(": ")
		b.WriteString(e.Field)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

func corrupt(structure string, off int64, field, format string, args ...any) error {
	return &Error{Struct: structure, Field: field, Off: off, Msg: fmt.Sprintf(format, args...), Err: ErrCorrupt}
}
