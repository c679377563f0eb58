//go:build !linux

package nbd

import (
	"errors"
	"syscall"
)

// canSendFile says whether sendFile works here.
const canSendFile = false

func sendFile(dst, src syscall.RawConn, off, n int64) (int64, error) {
	return 0, errors.ErrUnsupported
}

func prefetch(src syscall.RawConn, off, n int64) {}
