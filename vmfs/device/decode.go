package device

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// OS-free decoding of what the operating systems answer about a device, so
// that it is tested on every OS (the calls themselves are in the per-OS
// files).

// validSector reports whether n is a plausible logical sector size.
func validSector(n int64) bool {
	return n >= 512 && n <= maxSector && n&(n-1) == 0
}

// blocksToSize is macOS's size: DKIOCGETBLOCKCOUNT × DKIOCGETBLOCKSIZE,
// checked for overflow.
func blocksToSize(count uint64, blockSize uint32) (int64, error) {
	if !validSector(int64(blockSize)) {
		return 0, fmt.Errorf("block size %d", blockSize)
	}
	if count > math.MaxInt64/uint64(blockSize) {
		return 0, fmt.Errorf("%d blocks of %d bytes overflow", count, blockSize)
	}
	return int64(count) * int64(blockSize), nil
}

// Windows IOCTL codes and structures (winioctl.h).
const (
	ioctlDiskGetLengthInfo        = 0x0007405C // IOCTL_DISK_GET_LENGTH_INFO
	ioctlDiskGetDriveGeometryEx   = 0x000700A0 // IOCTL_DISK_GET_DRIVE_GEOMETRY_EX
	ioctlStorageQueryProperty     = 0x002D1400 // IOCTL_STORAGE_QUERY_PROPERTY
	storageAccessAlignmentProp    = 6          // StorageAccessAlignmentProperty
	propertyStandardQuery         = 0          // PropertyStandardQuery
	lengthInfoSize                = 8          // GET_LENGTH_INFORMATION
	geometryExSize                = 32         // DISK_GEOMETRY_EX without its Data tail
	accessAlignmentDescriptorSize = 28         // STORAGE_ACCESS_ALIGNMENT_DESCRIPTOR
	storagePropertyQuerySize      = 12         // STORAGE_PROPERTY_QUERY (with padding)
)

// decodeLengthInfo decodes GET_LENGTH_INFORMATION: LARGE_INTEGER Length.
func decodeLengthInfo(b []byte) (int64, error) {
	if len(b) < lengthInfoSize {
		return 0, fmt.Errorf("GET_LENGTH_INFORMATION: %d bytes, need %d", len(b), lengthInfoSize)
	}
	n := int64(binary.LittleEndian.Uint64(b))
	if n < 0 {
		return 0, fmt.Errorf("GET_LENGTH_INFORMATION: length %d", n)
	}
	return n, nil
}

// decodeGeometryEx decodes DISK_GEOMETRY_EX: DISK_GEOMETRY {LARGE_INTEGER
// Cylinders @0, MEDIA_TYPE @8, DWORD TracksPerCylinder @12, DWORD
// SectorsPerTrack @16, DWORD BytesPerSector @20}, LARGE_INTEGER DiskSize @24.
func decodeGeometryEx(b []byte) (sector int, size int64, err error) {
	if len(b) < geometryExSize {
		return 0, 0, fmt.Errorf("DISK_GEOMETRY_EX: %d bytes, need %d", len(b), geometryExSize)
	}
	ss := int64(binary.LittleEndian.Uint32(b[20:]))
	size = int64(binary.LittleEndian.Uint64(b[24:]))
	if !validSector(ss) {
		return 0, 0, fmt.Errorf("DISK_GEOMETRY_EX: BytesPerSector %d", ss)
	}
	if size < 0 {
		return 0, 0, fmt.Errorf("DISK_GEOMETRY_EX: DiskSize %d", size)
	}
	return int(ss), size, nil
}

// storageAlignmentQuery is the STORAGE_PROPERTY_QUERY input asking for the
// STORAGE_ACCESS_ALIGNMENT_DESCRIPTOR.
func storageAlignmentQuery() []byte {
	q := make([]byte, storagePropertyQuerySize)
	binary.LittleEndian.PutUint32(q[0:], storageAccessAlignmentProp)
	binary.LittleEndian.PutUint32(q[4:], propertyStandardQuery)
	return q
}

// decodeAccessAlignment decodes STORAGE_ACCESS_ALIGNMENT_DESCRIPTOR:
// Version @0, Size @4, BytesPerCacheLine @8, BytesOffsetForCacheAlignment
// @12, BytesPerLogicalSector @16, BytesPerPhysicalSector @20,
// BytesOffsetForSectorAlignment @24.
func decodeAccessAlignment(b []byte) (logical, physical int, err error) {
	if len(b) < accessAlignmentDescriptorSize {
		return 0, 0, fmt.Errorf("STORAGE_ACCESS_ALIGNMENT_DESCRIPTOR: %d bytes, need %d", len(b), accessAlignmentDescriptorSize)
	}
	if sz := binary.LittleEndian.Uint32(b[4:]); sz < accessAlignmentDescriptorSize {
		return 0, 0, fmt.Errorf("STORAGE_ACCESS_ALIGNMENT_DESCRIPTOR: Size %d", sz)
	}
	l, p := int64(binary.LittleEndian.Uint32(b[16:])), int64(binary.LittleEndian.Uint32(b[20:]))
	if !validSector(l) {
		return 0, 0, fmt.Errorf("STORAGE_ACCESS_ALIGNMENT_DESCRIPTOR: BytesPerLogicalSector %d", l)
	}
	return int(l), int(p), nil
}

// physicalDrive is the Windows name of disk i.
func physicalDrive(i int) string { return `\\.\PhysicalDrive` + strconv.Itoa(i) }

// isWindowsDevicePath reports whether p names a Win32 device (\\.\X or //./X)
// rather than a file.
func isWindowsDevicePath(p string) bool {
	return strings.HasPrefix(p, `\\.\`) || strings.HasPrefix(p, `//./`) || strings.HasPrefix(p, `\\?\GLOBALROOT\Device\`)
}

// sysBlockDevices lists the devices of a Linux /sys/block tree at root:
// every disk with a non-zero size (loop devices without a backing file and
// empty drives are 0), then every partition, as /dev paths. Whole disks come
// first so that a volume found on a disk and on its partition is named by
// the disk.
func sysBlockDevices(root string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var disks, parts []string
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "zram") {
			continue
		}
		dir := filepath.Join(root, name)
		if sysSize(dir) == 0 {
			continue
		}
		disks = append(disks, "/dev/"+name)
		subs, _ := os.ReadDir(dir)
		for _, s := range subs {
			if !strings.HasPrefix(s.Name(), name) {
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, s.Name(), "partition")); err == nil && sysSize(filepath.Join(dir, s.Name())) > 0 {
				parts = append(parts, "/dev/"+s.Name())
			}
		}
	}
	sort.Slice(disks, func(i, j int) bool { return natLess(disks[i], disks[j]) })
	sort.Slice(parts, func(i, j int) bool { return natLess(parts[i], parts[j]) })
	return append(disks, parts...), nil
}

// sysSize reads a sysfs "size" file (512-byte units, whatever the sector
// size); 0 when missing or unreadable.
func sysSize(dir string) int64 {
	b, err := os.ReadFile(filepath.Join(dir, "size"))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

var darwinDiskRE = regexp.MustCompile(`^disk[0-9]+(s[0-9]+)?$`)

// darwinDevices picks the disks and slices from the names in /dev and
// returns their raw (/dev/rdiskN) paths, whole disks first.
func darwinDevices(names []string) []string {
	var disks, parts []string
	for _, n := range names {
		if !darwinDiskRE.MatchString(n) {
			continue
		}
		if strings.Contains(n[4:], "s") {
			parts = append(parts, "/dev/r"+n)
		} else {
			disks = append(disks, "/dev/r"+n)
		}
	}
	sort.Slice(disks, func(i, j int) bool { return natLess(disks[i], disks[j]) })
	sort.Slice(parts, func(i, j int) bool { return natLess(parts[i], parts[j]) })
	return append(disks, parts...)
}

// natLess orders names with numbers by value: sdb2 < sdb10, loop9 < loop10.
func natLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da > 0 && db > 0 {
			na, _ := strconv.ParseUint(a[:da], 10, 64)
			nb, _ := strconv.ParseUint(b[:db], 10, 64)
			if na != nb {
				return na < nb
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitsPrefix(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}
