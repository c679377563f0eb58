// Command vmfs2vhd reads VMware VMFS datastores (VMFS3, VMFS5, VMFS6; one
// LUN or a spanned volume; a device or an image file) and converts the
// virtual disks stored on them straight into VHD, VHDX, qcow2 or raw.
//
// The command line lives in package internal/cli; this file only runs it.
package main

import (
	"os"

	"github.com/vmfs2vhd/vmfs2vhd/internal/cli"
)

func main() { os.Exit(cli.Main()) }
