package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/dsnet/golib/unitconv"
)

// parseSize reads a byte count: a plain integer, or a number with an IEC
// unit ("64MiB", "1.5GiB", "512KiB"; the trailing B is optional).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if n, err := strconv.ParseInt(t, 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	t = strings.TrimSuffix(t, "B")
	if !strings.HasSuffix(t, "i") {
		return 0, fmt.Errorf("size %q: want bytes or an IEC unit such as 64MiB or 2GiB", s)
	}
	v, err := unitconv.ParsePrefix(t, unitconv.IEC)
	if err != nil || v < 0 || v > math.MaxInt64/2 || math.IsNaN(v) {
		return 0, fmt.Errorf("size %q: want bytes or an IEC unit such as 64MiB or 2GiB", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return int64(v), nil
}

// formatSize prints n in IEC units with three significant decimals.
func formatSize(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	return unitconv.FormatPrefix(float64(n), unitconv.IEC, 2) + "B"
}

// sha256Path hashes a file ("" when it cannot be read).
func sha256Path(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}
