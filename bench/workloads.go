package main

import (
	"fmt"
	"strings"
)

// Workload kinds. The targets refer to them by these names.
const (
	kindDense  = "dense"
	kindThin   = "thin"
	kindThin2x = "thin-2x"
	kindChain  = "chain"
	kindHuge   = "2tib"
	kindMeta   = "meta"
)

// workload is one synthetic datastore and what is measured on it.
type workload struct {
	name    string   // kind-vmfsN, matched by -only
	kind    string   // one of the kind constants
	vmfs    int      // 5 or 6
	spec    []string // mkimage arguments describing the content
	disk    string   // leaf descriptor to convert (empty for meta)
	virtual int64    // virtual size of the disk in bytes
	refs    bool     // also run the reference tools (FUSE pipeline, plain qemu-img, cat floor)
	// twin, when set, is the spec of a second datastore whose disk ours also
	// converts in the same rounds (thin-2x measures thin beside it, so their
	// ratio does not depend on what the machine did minutes apart).
	twin []string
}

// sizes are the disk sizes of a run; -quick shrinks them.
type sizes struct {
	dense, thin, chain, huge int64
	hugeFill                 string // percent of huge holding 10 MiB
}

var (
	fullSizes  = sizes{dense: 1 << 30, thin: 32 << 30, chain: 8 << 30, huge: 2 << 40, hugeFill: "0.000477"}
	quickSizes = sizes{dense: 64 << 20, thin: 2 << 30, chain: 512 << 20, huge: 64 << 30, hugeFill: "0.0153"}
)

// diskArg is a mkimage --disk value for vm/vm.vmdk.
func diskArg(vm, typ string, size int64, fill string) string {
	return fmt.Sprintf("%s/%s.vmdk,type=%s,size=%s,fill=%s", vm, vm, typ, sizeArg(size), fill)
}

// sizeArg writes a size the way mkimage reads it.
func sizeArg(n int64) string {
	for _, u := range []struct {
		s     string
		shift uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.s)
		}
	}
	return fmt.Sprint(n)
}

// hugeVHDDisk is the 2000 GiB disk of the huge workload, for the VHD row.
const hugeVHDDisk = "vm2/vm2.vmdk"

// workloads lists every workload on VMFS5 and VMFS6, in run order.
func workloads(sz sizes) []workload {
	var ws []workload
	for _, v := range []int{5, 6} {
		add := func(kind string, virtual int64, refs bool, disk string, spec ...string) {
			ws = append(ws, workload{name: fmt.Sprintf("%s-vmfs%d", kind, v), kind: kind, vmfs: v,
				spec: spec, disk: disk, virtual: virtual, refs: refs})
		}
		add(kindDense, sz.dense, true, "vm1/vm1.vmdk", "--disk", diskArg("vm1", "eager", sz.dense, "100"))
		add(kindThin, sz.thin, true, "vm1/vm1.vmdk", "--disk", diskArg("vm1", "thin", sz.thin, "3"))
		add(kindThin2x, 2*sz.thin, true, "vm1/vm1.vmdk", "--disk", diskArg("vm1", "thin", 2*sz.thin, "1.5"))
		ws[len(ws)-1].twin = ws[len(ws)-2].spec
		chain := []string{"--disk", diskArg("vm1", "thin", sz.chain, "50")}
		for range 3 {
			chain = append(chain, "--snapshot", "vm1/vm1.vmdk,fill=2")
		}
		add(kindChain, sz.chain, true, "vm1/vm1-000003.vmdk", chain...)
		add(kindHuge, sz.huge, false, "vm1/vm1.vmdk", "--disk", diskArg("vm1", "thin", sz.huge, sz.hugeFill),
			"--disk", diskArg("vm2", "thin", sz.huge/2048*2000, sz.hugeFill))
		add(kindMeta, 0, false, "", metaSpec()...)
	}
	return ws
}

// metaSpec is a datastore of 25 VMs × 20 files (a small disk's descriptor
// and flat extent, the usual VM files and 14 logs): 500 files.
func metaSpec() []string {
	var spec []string
	for i := 1; i <= 25; i++ {
		vm := fmt.Sprintf("vm%d", i)
		spec = append(spec, "--disk", diskArg(vm, "thin", 16<<20, "10"))
		for _, ext := range []string{"vmx", "nvram", "vmsd", "vmxf"} {
			spec = append(spec, "--file", fmt.Sprintf("%s/%s.%s,size=4KiB", vm, vm, ext))
		}
		for k := 1; k <= 14; k++ {
			spec = append(spec, "--file", fmt.Sprintf("%s/vmware-%d.log,size=64KiB", vm, k))
		}
	}
	return spec
}

// mkimageArgs is the whole mkimage command line for w writing img.
func (w workload) mkimageArgs(img string) []string { return w.mkimage(w.spec, img) }

// mkimage is the mkimage command line for spec on w's VMFS version.
func (w workload) mkimage(spec []string, img string) []string {
	args := []string{"mkimage", "-q", "--vmfs", fmt.Sprint(w.vmfs), "--hash-limit", "1"}
	return append(append(args, spec...), img)
}

// vmDir is the folder of the workload's disk inside the volume.
func (w workload) vmDir() string {
	dir, _, _ := strings.Cut(w.disk, "/")
	return dir
}

// isExtent tells a VMDK extent (data file) from a descriptor by its name.
func isExtent(name string) bool {
	for _, s := range []string{"-flat.vmdk", "-delta.vmdk", "-sesparse.vmdk"} {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}
