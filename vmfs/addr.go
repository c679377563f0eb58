package vmfs

import "fmt"

// Address types: bits 0-2 of every address (§5).
const (
	akNull = 0
	akFB   = 1 // FB (VMFS3/5), SFB (VMFS6)
	akSB   = 2
	akPB   = 3
	akFD   = 4
	akPB2  = 5
	akJB   = 6
	akLFB  = 7
)

func addrType(a uint64) uint64 { return a & 7 }

var addrTypeNames = [8]string{"null", "FB", "SB", "PB", "FD", "PB2", "JB", "LFB"}

// addrString names an address for messages: "SB 0x1000000a".
func addrString(a uint64) string {
	return fmt.Sprintf("%s 0x%x", addrTypeNames[a&7], a)
}

// addrFormat holds the version-dependent address decoding (§5.1, §5.2).
type addrFormat struct {
	wide  bool // VMFS6 64-bit block addresses
	dense bool // VMFS3/5 config DENSE_SBPC: SB resource bits 4-5 in address bits 3-4
}

// tbz reports whether a file-block address is to be zeroed: bit 5 on
// VMFS3/5, any bit of the 8-bit bitmap (bits 7-14) on VMFS6 (§5.3).
func (f addrFormat) tbz(a uint64) bool {
	t := a & 7
	if !f.wide {
		return t == akFB && a&0x20 != 0
	}
	return (t == akFB || t == akLFB) && (a>>7)&0xFF != 0
}

// fbBlock returns the block number of a VMFS3/5 FB address (bits 6-31).
func fbBlock(a uint64) uint64 { return (a >> 6) & (1<<26 - 1) }

// sfbClusterRes returns (cluster, resource) of a VMFS6 SFB address.
func sfbClusterRes(a uint64) (cluster, res uint64) {
	return (a >> 15) & (1<<31 - 1), (a >> 51) & (1<<13 - 1)
}

// lfbBlock returns the block number of a VMFS6 LFB address.
func lfbBlock(a uint64) uint64 { return (a >> 15) & (1<<31 - 1) }

// clusterRes returns (cluster, resource) of an SB, PB or PB2 address.
func (f addrFormat) clusterRes(a uint64) (cluster, res uint64) {
	if f.wide {
		return (a >> 6) & (1<<36 - 1), a >> 56
	}
	cluster, res = (a>>6)&(1<<22-1), (a>>28)&0xF
	if f.dense && a&7 == akSB {
		res |= ((a >> 3) & 3) << 4
	}
	return cluster, res
}

// fdClusterRes returns (cluster, resource) of an FD address (32 bits on
// every version).
func fdClusterRes(a uint32) (cluster, res uint64) {
	return uint64(a>>6) & 0xFFFF, uint64(a >> 22)
}

// fdAddr builds the FD address of (cluster, resource).
func fdAddr(cluster, res uint64) uint32 { return uint32(res<<22 | cluster<<6 | akFD) }
