package nbd

import (
	"io"
	"syscall"

	"golang.org/x/sys/unix"
)

// canSendFile says whether sendFile works here.
const canSendFile = true

// maxSendFile bounds one sendfile(2) call.
const maxSendFile = 1 << 30

// sendFile sends n bytes at off of the file src to the socket dst with
// sendfile(2): the kernel moves them from the page cache to the socket
// without a copy through the server. It waits for the socket as a write
// does (deadlines included) and returns the bytes sent.
func sendFile(dst, src syscall.RawConn, off, n int64) (int64, error) {
	var sent int64
	var serr error
	cerr := src.Control(func(sfd uintptr) {
		werr := dst.Write(func(dfd uintptr) bool {
			for sent < n {
				o := off + sent
				m, err := syscall.Sendfile(int(dfd), int(sfd), &o, int(min(n-sent, maxSendFile)))
				if m > 0 {
					sent += int64(m)
				}
				switch {
				case err == syscall.EAGAIN:
					return false // wait until the socket takes more
				case err == syscall.EINTR:
				case err != nil:
					serr = err
					return true
				case m == 0:
					serr = io.ErrUnexpectedEOF // the file ends early
					return true
				}
			}
			return true
		})
		if serr == nil {
			serr = werr
		}
	})
	if serr == nil {
		serr = cerr
	}
	return sent, serr
}

// prefetch asks the kernel to start reading [off, off+n) of src into the
// page cache, without waiting: the requests of a connection are located by
// parallel workers but sent by one writer, and this keeps their device
// reads in parallel, as ReadAt by the workers would.
func prefetch(src syscall.RawConn, off, n int64) {
	src.Control(func(fd uintptr) {
		unix.Fadvise(int(fd), off, n, unix.FADV_WILLNEED)
	})
}
