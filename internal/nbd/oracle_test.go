package nbd

// Oracle tests: libnbd's nbdinfo and nbdcopy and qemu-img, independent NBD
// clients, judge the server. Each skips when its tool is missing, unless
// VMFS2VHD_REQUIRE_ORACLES=1 (Debian: apt-get install libnbd-bin
// qemu-utils).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/internal/synth"
)

// oracleImage is a 64 MiB disk with data, zero and hole runs of many sizes
// (the "random" pattern of package synth plus a fixed head).
func oracleImage() *synth.Image {
	const M = synth.MiB
	return synth.New(64*M, []formats.Extent{
		{Off: 0, Len: 1 * M, Kind: formats.Data},
		{Off: 1 * M, Len: 3 * M, Kind: formats.Zero},
		// hole [4M, 8M)
		{Off: 8 * M, Len: 512, Kind: formats.Data},
		{Off: 8*M + 512, Len: 4096, Kind: formats.Zero},
		{Off: 8*M + 4608, Len: 2*M - 4608, Kind: formats.Data},
		// hole [10M, 20M)
		{Off: 20 * M, Len: 9 * M, Kind: formats.Data},
		{Off: 29 * M, Len: 35*M - 64*1024, Kind: formats.Zero},
		{Off: 64*M - 64*1024, Len: 64 * 1024, Kind: formats.Data},
	}, 7)
}

func nbdURI(ts *testServer, export string) string {
	return "nbd+unix:///" + export + "?socket=" + ts.path
}

// kindType is nbdinfo's "type" of a kind: the base:allocation flags.
func kindType(k formats.Kind) uint32 {
	switch k {
	case formats.Zero:
		return stateZero
	case formats.Hole:
		return stateHole | stateZero
	}
	return 0
}

func TestOracleNbdinfoMap(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	img := oracleImage()
	ts := startServer(t, []Export{{Name: "disk", Description: "test disk", Image: img}}, Options{})
	out := oracle.Run(t, "nbdinfo", "--map", "--json", nbdURI(ts, "disk"))
	var got []struct {
		Offset, Length int64
		Type           uint32
		Description    string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	// nbdinfo prints the extents as the server sent them, split where its
	// requests were: merge runs of one type before comparing.
	type ext struct {
		off, n int64
		typ    uint32
	}
	var merged []ext
	for _, e := range got {
		if k := len(merged); k > 0 && merged[k-1].typ == e.Type && merged[k-1].off+merged[k-1].n == e.Offset {
			merged[k-1].n += e.Length
			continue
		}
		merged = append(merged, ext{e.Offset, e.Length, e.Type})
	}
	want, err := formats.Extents(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(merged) != len(want) {
		t.Fatalf("nbdinfo --map reports %d runs, want %d:\n%s", len(merged), len(want), out)
	}
	for i, w := range want {
		g := merged[i]
		if g.off != w.Off || g.n != w.Len || g.typ != kindType(w.Kind) {
			t.Errorf("run %d: nbdinfo says [%d, +%d) type %d, image has %s [%d, +%d) (type %d)",
				i, g.off, g.n, g.typ, w.Kind, w.Off, w.Len, kindType(w.Kind))
		}
	}
	// The server never read data to answer.
	for _, e := range got {
		if e.Type == 3 && e.Description != "hole,zero" || e.Type == 2 && e.Description != "zero" {
			t.Errorf("extent %+v: unexpected description", e)
		}
	}
}

func TestOracleNbdinfoList(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	exports := []Export{
		{Name: "disk", Description: "first disk", Image: testImage()},
		{Name: "vm/other disk.vmdk", Description: "a name with / and spaces", Image: synth.New(1<<20, nil, 1)},
		{Name: "plain", Image: synth.New(512, nil, 1)},
	}
	ts := startServer(t, exports, Options{})
	out := oracle.Run(t, "nbdinfo", "--list", "--json", nbdURI(ts, ""))
	var got struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
			Size        int64  `json:"export-size"`
			ReadOnly    bool   `json:"is_read_only"`
			Block       int64  `json:"block_size_maximum"`
			Preferred   int64  `json:"block_size_preferred"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	if len(got.Exports) != len(exports) {
		t.Fatalf("nbdinfo lists %d exports, want %d:\n%s", len(got.Exports), len(exports), out)
	}
	for i, e := range exports {
		g := got.Exports[i]
		if g.Name != e.Name || g.Description != e.Description || g.Size != e.Image.Size() || !g.ReadOnly || g.Block != DefaultMaxRequest || g.Preferred != PreferredBlock {
			t.Errorf("export %d: nbdinfo says %+v, want name %q, description %q, size %d, read-only, max block %d, preferred %d",
				i, g, e.Name, e.Description, e.Image.Size(), DefaultMaxRequest, PreferredBlock)
		}
	}
}

func TestOracleNbdcopy(t *testing.T) {
	oracle.Find(t, "nbdcopy")
	img := oracleImage()
	ts := startServer(t, []Export{{Name: "disk", Image: img}}, Options{})
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref.raw")
	synth.WriteRaw(t, ref, img)
	for _, args := range [][]string{
		nil,                                 // nbdcopy's defaults: several connections (multi-conn), 64 requests each
		{"--connections=1", "--requests=1"}, // one at a time
		{"--request-size=33554432"},         // the largest request
	} {
		out := filepath.Join(dir, "out.raw")
		os.Remove(out)
		oracle.Run(t, "nbdcopy", append(args, nbdURI(ts, "disk"), out)...)
		synth.SameFiles(t, ref, out)
	}

	// Without block status, nbdcopy reads everything: the server answers
	// zero and hole runs with hole chunks, without reading them.
	counted := &countImage{Image: img}
	ts2 := startServer(t, []Export{{Name: "disk", Image: counted}}, Options{})
	out := filepath.Join(dir, "out2.raw")
	oracle.Run(t, "nbdcopy", "--no-extents", nbdURI(ts2, "disk"), out)
	synth.SameFiles(t, ref, out)
	if got := counted.read.Load(); got != img.DataBytes() {
		t.Errorf("nbdcopy --no-extents: the server read %d bytes of the image, its data is %d", got, img.DataBytes())
	}
}

func TestOracleQemuImg(t *testing.T) {
	oracle.Find(t, "qemu-img")
	img := oracleImage()
	ts := startServer(t, []Export{{Name: "first", Image: synth.New(4096, nil, 3)}, {Name: "disk", Image: img}}, Options{})
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref.raw")
	synth.WriteRaw(t, ref, img)
	uri := nbdURI(ts, "disk")

	out := filepath.Join(dir, "out.raw")
	oracle.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
	synth.SameFiles(t, ref, out)
	oracle.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", ref, uri)

	// qemu-img map: data where the image has Data or Zero (allocated),
	// zero where it has Zero or Hole.
	js := oracle.Run(t, "qemu-img", "map", "--output=json", "-f", "raw", uri)
	var got []struct {
		Start, Length int64
		Data, Zero    bool
	}
	if err := json.Unmarshal(js, &got); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, js)
	}
	ext, _ := formats.Extents(img)
	type st struct{ data, zero bool }
	var want []struct {
		off, n int64
		st
	}
	for _, e := range ext {
		s := st{data: e.Kind != formats.Hole, zero: e.Kind != formats.Data}
		if k := len(want); k > 0 && want[k-1].st == s {
			want[k-1].n += e.Len
			continue
		}
		want = append(want, struct {
			off, n int64
			st
		}{e.Off, e.Len, s})
	}
	var merged []struct {
		off, n int64
		st
	}
	for _, g := range got {
		s := st{g.Data, g.Zero}
		if k := len(merged); k > 0 && merged[k-1].st == s {
			merged[k-1].n += g.Length
			continue
		}
		merged = append(merged, struct {
			off, n int64
			st
		}{g.Start, g.Length, s})
	}
	if fmt.Sprint(merged) != fmt.Sprint(want) {
		t.Errorf("qemu-img map:\n got %v\nwant %v", merged, want)
	}

	// The default export is the first.
	js = oracle.Run(t, "qemu-img", "info", "--output=json", "-f", "raw", nbdURI(ts, ""))
	if !strings.Contains(string(js), `"virtual-size": 4096`) {
		t.Errorf("qemu-img info of the default export:\n%s", js)
	}
}

// testPKI writes a CA, a server certificate for localhost and a client
// certificate, and returns the server's TLS configuration (client
// certificates required) and a directory laid out as libnbd wants it
// (ca-cert.pem, client-cert.pem, client-key.pem).
func testPKI(t testing.TB) (*tls.Config, string) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vmfs2vhd test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := issue(2, "localhost", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := issue(3, "client", x509.ExtKeyUsageClientAuth)

	dir := t.TempDir()
	writePEM := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	caFile := writePEM("ca-cert.pem", "CERTIFICATE", caDER)
	writePEM("client-cert.pem", "CERTIFICATE", cliDER)
	writePEM("client-key.pem", "PRIVATE KEY", keyDER(cliKey))
	srvDir := t.TempDir()
	srvCert := filepath.Join(srvDir, "server-cert.pem")
	srvKeyFile := filepath.Join(srvDir, "server-key.pem")
	os.WriteFile(srvCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}), 0o600)
	os.WriteFile(srvKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER(srvKey)}), 0o600)
	cfg, err := TLSConfig(srvCert, srvKeyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, dir
}

func TestOracleNbdinfoTLS(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	cfg, certs := testPKI(t)
	img := testImage()
	ts := startServer(t, []Export{{Name: "disk", Description: "secret disk", Image: img}}, Options{TLS: cfg})
	uri := "nbds+unix:///disk?socket=" + ts.path + "&tls-certificates=" + certs

	out := oracle.Run(t, "nbdinfo", "--json", uri)
	var info struct {
		TLS     bool `json:"TLS"`
		Exports []struct {
			Name string `json:"export-name"`
			Size int64  `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if !info.TLS || len(info.Exports) != 1 || info.Exports[0].Size != img.Size() {
		t.Errorf("nbdinfo over TLS: %s", out)
	}
	// The map over TLS too.
	oracle.Run(t, "nbdinfo", "--map", uri)

	// qemu-img over TLS: qemu wants the same file names.
	if _, err := exec.LookPath("qemu-img"); err == nil || oracle.Required() {
		ref := filepath.Join(t.TempDir(), "ref.raw")
		synth.WriteRaw(t, ref, img)
		oracle.Run(t, "qemu-img", "compare",
			"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+certs,
			"--image-opts", "driver=file,filename="+ref,
			"driver=nbd,server.type=unix,server.path="+ts.path+",export=disk,tls-creds=tls0,tls-hostname=localhost")
	}

	// Plain text is refused.
	if out, stderr, err := oracle.RunErr(t, "nbdinfo", "--size", nbdURI(ts, "disk")); err == nil {
		t.Errorf("nbdinfo without TLS succeeded: %s", out)
	} else {
		t.Logf("without TLS: %s", strings.TrimSpace(string(stderr)))
	}
	// So is a client without a certificate.
	noCert := t.TempDir()
	ca, _ := os.ReadFile(filepath.Join(certs, "ca-cert.pem"))
	os.WriteFile(filepath.Join(noCert, "ca-cert.pem"), ca, 0o600)
	if out, stderr, err := oracle.RunErr(t, "nbdinfo", "--size", "nbds+unix:///disk?socket="+ts.path+"&tls-certificates="+noCert); err == nil {
		t.Errorf("nbdinfo without a client certificate succeeded: %s", out)
	} else {
		t.Logf("without a client certificate: %s", strings.TrimSpace(string(stderr)))
	}
}
