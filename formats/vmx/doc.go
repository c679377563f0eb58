// Package vmx reads VMware virtual machine configurations — the .vmx file
// and the .vmsd snapshot list beside it — into a VM model that migration
// targets can be generated from (package vmx/target).
//
// Layering, bottom up:
//
//   - Parse / ParseBytes: VMware's dictionary format (`key = "value"`
//     lines) into a File, tolerant of what the products write: any key
//     case, CRLF, comments, duplicate keys (the last wins, with a
//     warning), |XX escapes, and the .encoding of the file (UTF-8,
//     windows-1252, ISO-8859-1). Files over MaxFileSize are refused.
//     Errors are *Error values naming file and line and unwrapping to
//     ErrSyntax, ErrTooLarge or ErrEncoding.
//   - Build: a VM from a .vmx File and an optional .vmsd File — firmware,
//     CPUs, memory, controllers, disks in boot order, CD-ROMs, network
//     adapters, snapshots. It never fails: what it cannot read or has to
//     guess goes to VM.Problems, naming file and line.
//   - Load: reads both files through a vmdk.FS (so a VM on a VMFS
//     datastore and one in a local folder are read alike) and checks that
//     the disks it names exist.
//
// Defaults follow what VMware does with an absent key: firmware BIOS,
// numvcpus 1, cpuid.coresPerSocket 1, memSize 32 MiB, a device or a
// SCSI/SATA/NVMe controller without .present = TRUE does not exist, the
// two IDE channels always exist, scsiN.virtualDev buslogic, disk mode
// persistent, ethernetN.addressType generated.
//
// Disk paths: names relative to the VM's folder (ESXi, hosted products),
// /vmfs/volumes/<volume>/… (a disk on another datastore: Disk.Datastore
// and Disk.Path let the caller find it), Windows and macOS absolute host
// paths (looked for by base name in the VM's folder, HostPath keeps the
// original).
//
// The package knows nothing of VMFS; it imports formats/vmdk only for the
// FS interface.
package vmx
