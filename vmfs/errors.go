package vmfs

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// Sentinel errors; every *Error unwraps to one of them (or to a device I/O
// error).
var (
	// ErrCorrupt reports metadata that contradicts itself or the volume:
	// a bad magic, an address out of range, an absurd count, a truncated
	// device.
	ErrCorrupt = errors.New("corrupt metadata")
	// ErrUnsupported reports a valid-looking structure this reader does not
	// handle (an unknown address form or version).
	ErrUnsupported = errors.New("unsupported")
	// ErrNotFound reports a path that does not exist. errors.Is(err,
	// fs.ErrNotExist) also holds for it.
	ErrNotFound = errors.New("no such file or directory")
	// ErrMissingExtent reports a logical range of a spanned volume whose
	// device was not given.
	ErrMissingExtent = errors.New("extent missing")
	// ErrNotVMFS reports a device on which no VMFS entry point was found.
	ErrNotVMFS = errors.New("no VMFS volume found")
	// ErrNotDir reports a path component that is not a directory.
	ErrNotDir = errors.New("not a directory")
	// ErrNoData reports a read of a file that keeps no data on the volume
	// (a raw device mapping).
	ErrNoData = errors.New("file has no data on the volume")
	// ErrInvalid reports a bad argument: devices of different volumes, the
	// same device twice, a negative offset.
	ErrInvalid = errors.New("invalid argument")
)

// Error describes a problem found while reading a volume. Fields that do not
// apply are empty (strings), zero (FD) or negative (offsets).
type Error struct {
	Path   string // file path on the volume, if known
	FD     uint32 // FD address of the file involved, 0 if none
	What   string // the structure, e.g. "FS descriptor", "pointer block 0x4003"
	Field  string // the field of What, if one is to blame
	Vol    int64  // absolute logical-volume offset of What, -1 if none
	Device string // device name, when the offset is a device offset
	DevOff int64  // absolute device offset, -1 if none
	Msg    string // what is wrong
	Err    error  // sentinel or I/O error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("vmfs: ")
	if e.Path != "" {
		fmt.Fprintf(&b, "%s: ", e.Path)
	}
	if e.FD != 0 {
		fmt.Fprintf(&b, "FD 0x%08x: ", e.FD)
	}
	if e.What != "" {
		b.WriteString(e.What)
		if e.Field != "" {
			fmt.Fprintf(&b, " field %s", e.Field)
		}
		if e.Vol >= 0 {
			fmt.Fprintf(&b, " at volume offset 0x%x", e.Vol)
		}
		if e.Device != "" {
			fmt.Fprintf(&b, " (device %s", e.Device)
			if e.DevOff >= 0 {
				fmt.Fprintf(&b, " offset 0x%x", e.DevOff)
			}
			b.WriteString(")")
		}
		b.WriteString(": ")
	} else if e.Device != "" {
		fmt.Fprintf(&b, "device %s", e.Device)
		if e.DevOff >= 0 {
			fmt.Fprintf(&b, " offset 0x%x", e.DevOff)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Err != nil && e.Msg != e.Err.Error() {
		if e.Msg != "" {
			b.WriteString(": ")
		}
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes ErrNotFound match fs.ErrNotExist and ErrInvalid fs.ErrInvalid.
func (e *Error) Is(target error) bool {
	return (target == fs.ErrNotExist && e.Err == ErrNotFound) ||
		(target == fs.ErrInvalid && e.Err == ErrInvalid)
}

// errf builds an *Error about structure what at logical offset vol (-1 if
// none).
func errf(sentinel error, what string, vol int64, format string, args ...any) *Error {
	return &Error{What: what, Vol: vol, DevOff: -1, Msg: fmt.Sprintf(format, args...), Err: sentinel}
}

func corruptf(what string, vol int64, format string, args ...any) *Error {
	return errf(ErrCorrupt, what, vol, format, args...)
}

func fieldErr(sentinel error, what, field string, vol int64, format string, args ...any) *Error {
	e := errf(sentinel, what, vol, format, args...)
	e.Field = field
	return e
}

// withFile fills in the path and FD of err when it is an *Error that does not
// name them yet.
func withFile(err error, path string, fd uint32) error {
	var e *Error
	if errors.As(err, &e) {
		if e.Path == "" {
			e.Path = path
		}
		if e.FD == 0 {
			e.FD = fd
		}
	}
	return err
}
