package cli

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

// The README's "boot a VM from its datastore" recipe, run: QEMU boots a disk
// of a generated datastore through `vmfs2vhd serve`, its writes going to a
// throw-away overlay (snapshot=on) or to a qcow2 file whose backing file is
// the export. The disk's boot sector (bootSector) reads a sector in another
// VMFS file block through the BIOS and prints it on the serial port, so the
// test sees QEMU's firmware read the export in two VMFS file blocks.

const (
	bootLBA  = 6144 // 3 MiB: the sector the boot sector reads (a file block of its own)
	bootHi   = "vmfs2vhd boot test: sector 0 read over NBD\r\n"
	bootLine = "vmfs2vhd boot test: LBA 6144 read over NBD\r\n"
	bootFail = "vmfs2vhd boot test: int 13h read failed\r\n"
	bootOK   = 0x10<<1 | 1 // QEMU's exit status for isa-debug-exit value 0x10
)

// bootSector returns a BIOS boot sector, hand-assembled (16-bit real mode,
// loaded at 0000:7C00). It prints bootHi to COM1, reads sector bootLBA to
// 0000:8000 with int 13h AH=42h (extended read, the drive in DL as the
// BIOS left it: print keeps DX), prints the NUL-terminated line found there, and ends QEMU
// through isa-debug-exit (port 0xF4) with status 33 — or prints bootFail
// and ends it with status 35 if the BIOS reported an error.
func bootSector(t *testing.T) []byte {
	t.Helper()
	s := make([]byte, 512)
	code := [][]byte{
		{0xFA},             // 00 cli
		{0x31, 0xC0},       // 01 xor ax, ax
		{0x8E, 0xD8},       // 03 mov ds, ax
		{0x8E, 0xC0},       // 05 mov es, ax
		{0x8E, 0xD0},       // 07 mov ss, ax
		{0xBC, 0x00, 0x7C}, // 09 mov sp, 0x7C00
		{0xFB},             // 0C sti
		{0xBE, 0x54, 0x7C}, // 0D mov si, hello (0x7C54)
		{0xE8, 0x23, 0x00}, // 10 call print (0x36)
		{0xBE, 0x44, 0x7C}, // 13 mov si, dap (0x7C44)
		{0xB4, 0x42},       // 16 mov ah, 0x42
		{0xCD, 0x13},       // 18 int 0x13
		{0x72, 0x0C},       // 1A jc fail (0x28)
		{0xBE, 0x00, 0x80}, // 1C mov si, 0x8000
		{0xE8, 0x14, 0x00}, // 1F call print (0x36)
		{0xB0, 0x10},       // 22 mov al, 0x10
		{0xE6, 0xF4},       // 24 out 0xF4, al
		{0xEB, 0x0A},       // 26 jmp halt (0x32)
		{0xBE, 0x00, 0x7D}, // 28 fail: mov si, failed (0x7D00)
		{0xE8, 0x08, 0x00}, // 2B call print (0x36)
		{0xB0, 0x11},       // 2E mov al, 0x11
		{0xE6, 0xF4},       // 30 out 0xF4, al
		{0xFA},             // 32 halt: cli
		{0xF4},             // 33 hlt
		{0xEB, 0xFC},       // 34 jmp halt (0x32)
		{0x52},             // 36 print: push dx (the boot drive)
		{0xBA, 0xF8, 0x03}, // 37 mov dx, 0x3F8 (COM1)
		{0xAC},             // 3A next: lodsb
		{0x84, 0xC0},       // 3B test al, al
		{0x74, 0x03},       // 3D jz done (0x42)
		{0xEE},             // 3F out dx, al
		{0xEB, 0xF8},       // 40 jmp next (0x3A)
		{0x5A},             // 42 done: pop dx
		{0xC3},             // 43 ret
	}
	var off int
	for _, ins := range code {
		off += copy(s[off:], ins)
	}
	if off != 0x44 {
		t.Fatalf("boot sector code ends at %#x, not at the disk address packet (0x44)", off)
	}
	// 44: the disk address packet: size 16, 1 sector, to 0000:8000, LBA.
	dap := s[0x44:0x54]
	dap[0], dap[2] = 0x10, 1
	dap[4], dap[5] = 0x00, 0x80
	for i := range 8 {
		dap[8+i] = byte(uint64(bootLBA) >> (8 * i))
	}
	copy(s[0x54:], bootHi+"\x00")
	copy(s[0x100:], bootFail+"\x00")
	s[510], s[511] = 0x55, 0xAA
	return s
}

// bootSpec is a VMFS datastore holding boot/boot.vmdk, a 4 MiB flat disk
// whose first sector is bootSector and whose sector bootLBA holds bootLine.
func bootSpec(t *testing.T, ver int) testimages.Spec {
	disk := make([]byte, 4<<20)
	copy(disk, bootSector(t))
	copy(disk[bootLBA*512:], bootLine+"\x00")
	desc := `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=6a1b2c3d
parentCID=ffffffff
createType="vmfs"

# Extent description
RW 8192 VMFS "boot-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "8"
ddb.geometry.heads = "64"
ddb.geometry.sectors = "32"
ddb.virtualHWVersion = "19"
`
	return testimages.Spec{
		VMFS: ver, Seed: int64(ver)*1000 + 42, Label: "boot",
		Files: []testimages.FileSpec{
			{Path: "boot", Type: "dir"},
			{Path: "boot/boot.vmdk", Content: []byte(desc)},
			{Path: "boot/boot-flat.vmdk", Content: disk},
		},
	}
}

// runQEMU boots QEMU (TCG: no KVM needed) from drive and returns what the
// guest wrote to its serial port and QEMU's exit status.
func runQEMU(t *testing.T, drive string) (serial string, status int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out := filepath.Join(t.TempDir(), "serial.txt")
	cmd := exec.CommandContext(ctx, oracle.Find(t, "qemu-system-x86_64"),
		"-nodefaults", "-machine", "pc", "-m", "64", "-display", "none", "-no-reboot",
		"-serial", "file:"+out, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-drive", drive)
	msg, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		status = ee.ExitCode()
	case err != nil:
		t.Fatalf("qemu-system-x86_64: %v\n%s", err, msg)
	}
	if ctx.Err() != nil {
		t.Fatalf("qemu-system-x86_64 -drive %s: no exit in 90 s (the guest hung)\n%s", drive, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("qemu-system-x86_64 wrote no serial output: %v\n%s", err, msg)
	}
	return string(b), status
}

func TestServeBootQEMU(t *testing.T) {
	oracle.Find(t, "qemu-system-x86_64")
	oracle.Find(t, "qemu-img")
	for _, ver := range []int{5, 6} {
		ds := buildDatastore(t, bootSpec(t, ver))
		sock := filepath.Join(t.TempDir(), "s.sock")
		s := startServe(t, serveArgs(ds, "--socket", sock)...)
		uri := unixURI(sock, "boot/boot.vmdk")
		overlay := filepath.Join(t.TempDir(), "overlay.qcow2")
		oracle.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", uri, overlay)
		for _, drive := range []string{
			"file=" + uri + ",format=raw,snapshot=on,if=ide", // the README's recipe, without KVM
			"file=" + overlay + ",format=qcow2,if=ide",       // the README's overlay that keeps changes
		} {
			serial, status := runQEMU(t, drive)
			if status != bootOK || !strings.Contains(serial, bootHi) || !strings.Contains(serial, bootLine) {
				t.Errorf("VMFS%d, -drive %s: exit status %d (want %d), serial port:\n%s", ver, drive, status, bootOK, serial)
			}
		}
		if code := s.stop(t); code != 0 {
			t.Errorf("VMFS%d: serve exit %d:\n%s", ver, code, s.stderr)
		}
	}
}
