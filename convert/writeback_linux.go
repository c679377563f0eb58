package convert

import "syscall"

// startWriteback asks the kernel to start writing the file's dirty pages
// without waiting for them (sync_file_range with SYNC_FILE_RANGE_WRITE). It
// is only a hint: an error changes nothing, Commit's fsync still decides.
func startWriteback(fd uintptr) {
	const syncFileRangeWrite = 2 // SYNC_FILE_RANGE_WRITE
	_ = syscall.SyncFileRange(int(fd), 0, 0, syncFileRangeWrite)
}
