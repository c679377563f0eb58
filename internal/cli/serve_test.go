package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/internal/oracle"
	"github.com/vmfs2vhd/vmfs2vhd/testimages"
	"github.com/vmfs2vhd/vmfs2vhd/vmfs"
)

// Tests of `vmfs2vhd serve`: the app runs in-process in a goroutine, the
// NBD clients qemu-img, nbdcopy and nbdinfo (libnbd) are the judges, the
// generated datastore's manifest is the ground truth.

// lockedBuffer is a bytes.Buffer the server writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serving is a `vmfs2vhd serve` running in-process.
type serving struct {
	cancel context.CancelFunc
	done   chan int
	stderr *lockedBuffer
	code   int
	exited bool
}

// serveArgs are flags, the datastore's -e flags and its VOLUME.
func serveArgs(ds datastore, flags ...string) []string {
	return append(append(flags, ds.args...), ds.volume)
}

// startServe runs `vmfs2vhd serve args…` and waits until it listens (it
// prints how to stop it) or exits.
func startServe(t *testing.T, args ...string) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{cancel: cancel, done: make(chan int, 1), stderr: &lockedBuffer{}}
	go func() {
		s.done <- run(ctx, append([]string{"vmfs2vhd", "serve"}, args...), io.Discard, s.stderr)
	}()
	t.Cleanup(func() { s.stop(t) })
	deadline := time.After(20 * time.Second)
	for {
		if e := s.stderr.String(); strings.Contains(e, "Ctrl-C stops the server") || strings.Contains(e, "(--one-shot)") {
			return s
		}
		select {
		case s.code = <-s.done:
			s.exited = true
			t.Fatalf("serve %q exited %d:\n%s", args, s.code, s.stderr.String())
		case <-deadline:
			t.Fatalf("serve %q did not start:\n%s", args, s.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stop cancels the server's context (what SIGINT does) and returns its exit
// code.
func (s *serving) stop(t *testing.T) int {
	t.Helper()
	s.cancel()
	return s.wait(t)
}

// wait waits for the server to exit by itself.
func (s *serving) wait(t *testing.T) int {
	t.Helper()
	if s.exited {
		return s.code
	}
	select {
	case s.code = <-s.done:
		s.exited = true
	case <-time.After(20 * time.Second):
		t.Fatalf("serve did not stop:\n%s", s.stderr.String())
	}
	return s.code
}

// waitSocket waits until a Unix socket exists at p.
func waitSocket(t *testing.T, p string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if fi, err := os.Lstat(p); err == nil && fi.Mode().Type() == os.ModeSocket {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket at %s", p)
		}
	}
}

func unixURI(sock, export string) string {
	return "nbd+unix:///" + pathEscape(export) + "?socket=" + sock
}

// pathEscape escapes an export name for an NBD URI (a space, ü…).
func pathEscape(name string) string {
	var b strings.Builder
	for _, seg := range strings.Split(name, "/") {
		if b.Len() > 0 {
			b.WriteByte('/')
		}
		b.WriteString(strings.ReplaceAll(urlPathSegment(seg), "+", "%2B"))
	}
	return b.String()
}

func urlPathSegment(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// serveSpec is a small datastore: a thin disk with a two-level chain and a
// lazy disk (TBZ blocks full of garbage); extents > 1 spans it.
func serveSpec(ver, extents int) testimages.Spec {
	return testimages.Spec{
		VMFS: ver, Seed: int64(ver)*1000 + 16, Label: "serve", Extents: extents,
		Disks: []testimages.DiskSpec{
			{Path: "vm1/vm1.vmdk", Type: testimages.Thin, Size: 8 << 20, Fill: 40},
			{Path: "vm2/vm2.vmdk", Type: testimages.Lazy, Size: 4 << 20, Fill: 50},
		},
		Snapshots: []testimages.SnapshotSpec{{Base: "vm1/vm1.vmdk", Fill: 10}, {Base: "vm1/vm1.vmdk", Fill: 10}},
	}
}

// nbdExtent is one line of nbdinfo --map --json.
type nbdExtent struct {
	Offset, Length int64
	Type           uint32
}

// nbdMap returns nbdinfo's map of an export with adjacent runs of one type
// merged (nbdinfo splits them where its requests were).
func nbdMap(t *testing.T, uri string) []nbdExtent {
	t.Helper()
	out := oracle.Run(t, "nbdinfo", "--map", "--json", uri)
	var got []nbdExtent
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("nbdinfo --map --json %s: %v\n%s", uri, err, out)
	}
	var merged []nbdExtent
	for _, e := range got {
		if k := len(merged); k > 0 && merged[k-1].Type == e.Type && merged[k-1].Offset+merged[k-1].Length == e.Offset {
			merged[k-1].Length += e.Length
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

// nbdType is base:allocation's state of a kind, as nbdinfo prints it.
func nbdType(k formats.Kind) uint32 {
	switch k {
	case formats.Zero:
		return 2 // NBD_STATE_ZERO
	case formats.Hole:
		return 3 // NBD_STATE_HOLE | NBD_STATE_ZERO
	}
	return 0
}

// checkExport reads export name of the server on sock with qemu-img and
// nbdcopy (the manifest's sha256) and maps it with nbdinfo (the disk's
// extents as package vmdk reads them, the manifest's allocation).
func checkExport(t *testing.T, sock string, want testimages.ManifestDisk, img formats.Image) {
	t.Helper()
	uri := unixURI(sock, want.Path)
	dir := t.TempDir()
	q := filepath.Join(dir, "qemu.raw")
	oracle.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, q)
	if got := sha256File(t, q); got != want.SHA256 {
		t.Errorf("%s: qemu-img convert from the export: sha256 %s, manifest %s", want.Path, got, want.SHA256)
	}
	n := filepath.Join(dir, "nbdcopy.raw")
	oracle.Run(t, "nbdcopy", uri, n)
	if got := sha256File(t, n); got != want.SHA256 {
		t.Errorf("%s: nbdcopy from the export: sha256 %s, manifest %s", want.Path, got, want.SHA256)
	}

	got := nbdMap(t, uri)
	ext, err := formats.Extents(img)
	if err != nil {
		t.Fatal(err)
	}
	// Zero and hole runs next to each other are one run to a client that
	// only asks "is it data": compare the exact kinds first, then the data.
	var data int64
	for _, e := range got {
		if e.Type == 0 {
			data += e.Length
		}
	}
	if data != want.Allocated {
		t.Errorf("%s: nbdinfo --map reports %d data bytes, the manifest %d allocated", want.Path, data, want.Allocated)
	}
	if len(got) != len(ext) {
		t.Errorf("%s: nbdinfo --map reports %d runs, the disk has %d:\nnbdinfo %v\ndisk    %v", want.Path, len(got), len(ext), got, ext)
		return
	}
	for i, e := range ext {
		if g := got[i]; g.Offset != e.Off || g.Length != e.Len || g.Type != nbdType(e.Kind) {
			t.Errorf("%s: run %d: nbdinfo says [%d, +%d) type %d, the disk has %s [%d, +%d)", want.Path, i, g.Offset, g.Length, g.Type, e.Kind, e.Off, e.Len)
		}
	}
}

// openManifestDisk opens a disk of the datastore through package vmdk, at
// the chain point its descriptor is.
func openManifestDisk(t *testing.T, v *vmfs.Volume, name string) formats.Image {
	t.Helper()
	d, err := vmdk.Open(volumeFS(v), name, vmdk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func openDatastore(t *testing.T, ds datastore) *vmfs.Volume {
	t.Helper()
	var paths []string
	for _, p := range ds.m.Images {
		paths = append(paths, filepath.Join(ds.dir, p))
	}
	v, err := vmfs.OpenFiles(paths...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

type nbdList struct {
	Exports []struct {
		Name        string `json:"export-name"`
		Description string `json:"description"`
		Size        int64  `json:"export-size"`
		ReadOnly    bool   `json:"is_read_only"`
	} `json:"exports"`
}

// Every disk of the generated datastores, served: the leaves by default,
// every other point of a chain as LEAF@SNAPSHOT. qemu-img and nbdcopy read
// the manifest's bytes, nbdinfo maps exactly the disk's data, zero (TBZ) and
// hole runs and lists the exports with their size, provisioning and chain.
func TestServeDatastores(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	oracle.Find(t, "nbdcopy")
	oracle.Find(t, "qemu-img")
	for _, tc := range []struct {
		name string
		spec testimages.Spec
	}{
		{"vmfs5", testimages.Sample(5)},
		{"vmfs6", testimages.Sample(6)},
		{"vmfs6-spanned", serveSpec(6, 2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ds := buildDatastore(t, tc.spec)
			v := openDatastore(t, ds)
			sock := filepath.Join(t.TempDir(), "s.sock")

			// The leaves, by default.
			s := startServe(t, serveArgs(ds, "--socket", sock)...)
			waitSocket(t, sock)
			var list nbdList
			out := oracle.Run(t, "nbdinfo", "--list", "--json", "nbd+unix:///?socket="+sock)
			if err := json.Unmarshal(out, &list); err != nil {
				t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
			}
			var leaves, listed []string
			for _, d := range ds.m.Disks {
				if d.Leaf {
					leaves = append(leaves, d.Path)
				}
			}
			for _, e := range list.Exports {
				listed = append(listed, e.Name)
				want := manifestDisk(ds.m, e.Name)
				chain := "no snapshots"
				if len(want.Chain) > 1 {
					chain = "chain " + strings.Join(want.Chain, " → ")
				}
				if e.Size != want.VirtualSize || !e.ReadOnly || !strings.Contains(e.Description, ", "+want.Provisioning+", ") || !strings.HasSuffix(e.Description, chain) {
					t.Errorf("nbdinfo --list: %+v; want size %d, read-only, %s, %s", e, want.VirtualSize, want.Provisioning, chain)
				}
			}
			slices.Sort(leaves)
			slices.Sort(listed)
			if !slices.Equal(leaves, listed) {
				t.Errorf("exports %q, want the leaves %q", listed, leaves)
			}
			for _, d := range ds.m.Disks {
				if d.Leaf {
					checkExport(t, sock, d, openManifestDisk(t, v, d.Path))
					if !strings.Contains(s.stderr.String(), unixURI(sock, d.Path)) {
						t.Errorf("stderr does not show the URI of %s:\n%s", d.Path, s.stderr)
					}
				}
			}
			if code := s.stop(t); code != 0 {
				t.Errorf("serve exited %d on a cancellation:\n%s", code, s.stderr)
			}
			if _, err := os.Lstat(sock); err == nil {
				t.Errorf("the socket is left behind")
			}

			// The other points of the chains, as LEAF@SNAPSHOT.
			var args []string
			var points []testimages.ManifestDisk
			for _, d := range ds.m.Disks {
				if d.Leaf {
					continue
				}
				for _, l := range ds.m.Disks {
					if l.Leaf && slices.Contains(l.Chain, d.Path) {
						args = append(args, l.Path+"@"+path.Base(d.Path))
						points = append(points, d)
						break
					}
				}
			}
			if len(points) == 0 {
				t.Fatal("the datastore has no snapshot chain")
			}
			s = startServe(t, append(serveArgs(ds, "--socket", sock), args...)...)
			waitSocket(t, sock)
			for _, d := range points {
				checkExport(t, sock, d, openManifestDisk(t, v, d.Path))
			}
			if code := s.stop(t); code != 0 {
				t.Errorf("serve exited %d on a cancellation:\n%s", code, s.stderr)
			}
		})
	}
}

// A cancellation (SIGINT, SIGTERM) stops the server at once, with clients
// connected, exit 0; the default socket's private directory is removed and
// no goroutine is left.
func TestServeCancelCleansUp(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	ds := buildDatastore(t, serveSpec(5, 1))
	before := runtime.NumGoroutine()
	s := startServe(t, "-v", ds.volume)
	m := regexp.MustCompile(`on Unix socket (\S+)\n`).FindStringSubmatch(s.stderr.String())
	if m == nil {
		t.Fatalf("no socket path on stderr:\n%s", s.stderr)
	}
	sock := m[1]
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v, mode %v; want 0600", sock, err, fi.Mode())
	}
	if di, err := os.Stat(filepath.Dir(sock)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory: %v, %v; want a private directory", err, di.Mode())
	}
	// A client that stays connected while the server stops: a raw
	// connection past the greeting.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(c, greeting); err != nil {
		t.Fatal(err)
	}
	out := oracle.Run(t, "nbdinfo", "--size", unixURI(sock, "vm2/vm2.vmdk"))
	if strings.TrimSpace(string(out)) != "4194304" {
		t.Errorf("nbdinfo --size: %s", out)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(s.stderr.String(), "connection 2 from local closed"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("-v did not report the closed connection:\n%s", s.stderr)
		}
	}
	if !regexp.MustCompile(`connection 2 from local closed after \S+: export "vm2/vm2.vmdk", \d+ requests, .* read, .* in, .* out\n`).MatchString(s.stderr.String()) {
		t.Errorf("-v line of the closed connection:\n%s", s.stderr)
	}
	if code := s.stop(t); code != 0 {
		t.Errorf("exit %d on a cancellation:\n%s", code, s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "\nstopped\n") {
		t.Errorf("stderr does not say the server stopped:\n%s", s.stderr)
	}
	if _, err := os.Lstat(filepath.Dir(sock)); err == nil {
		t.Errorf("%s is left behind", filepath.Dir(sock))
	}
	// The raw client was disconnected.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("the connected client was not disconnected")
	}
	var now int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= before {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before serve, %d after it stopped:\n%s", before, now, buf[:runtime.Stack(buf, true)])
		}
	}
}

// --one-shot: the server exits 0 once its client has gone, as a script
// that starts it in the background and waits for the socket expects.
func TestServeOneShot(t *testing.T) {
	oracle.Find(t, "nbdcopy")
	ds := buildDatastore(t, serveSpec(6, 1))
	sock := filepath.Join(t.TempDir(), "s.sock")
	s := startServe(t, "--one-shot", "--socket", sock, ds.volume, "vm1/vm1-000002.vmdk@vm1")
	waitSocket(t, sock)
	o := filepath.Join(t.TempDir(), "o.raw")
	oracle.Run(t, "nbdcopy", unixURI(sock, "vm1/vm1.vmdk"), o)
	if want := manifestDisk(ds.m, "vm1/vm1.vmdk").SHA256; sha256File(t, o) != want {
		t.Errorf("nbdcopy from the one-shot server: not the bytes of vm1/vm1.vmdk")
	}
	if code := s.wait(t); code != 0 {
		t.Errorf("serve --one-shot exited %d:\n%s", code, s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "stopped: the last client disconnected") {
		t.Errorf("stderr:\n%s", s.stderr)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Errorf("the socket is left behind")
	}
}

// --listen on TCP works, prints nbd:// URIs and warns that anyone can read.
func TestServeTCP(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	oracle.Find(t, "qemu-img")
	ds := buildDatastore(t, serveSpec(6, 1))
	s := startServe(t, "--listen", "127.0.0.1:0", ds.volume, "vm1/vm1-000001.vmdk", "vm2/vm2.vmdk")
	e := s.stderr.String()
	if !strings.Contains(e, "WARNING: listening on TCP 127.0.0.1:") || !strings.Contains(e, "anyone who can connect can read these disks") {
		t.Errorf("no warning about TCP:\n%s", e)
	}
	m := regexp.MustCompile(`nbd://127\.0\.0\.1:(\d+)/vm1/vm1-000001\.vmdk\n`).FindStringSubmatch(e)
	if m == nil {
		t.Fatalf("no nbd:// URI on stderr:\n%s", e)
	}
	want := manifestDisk(ds.m, "vm1/vm1-000001.vmdk")
	o := filepath.Join(t.TempDir(), "o.raw")
	oracle.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", "nbd://127.0.0.1:"+m[1]+"/vm1/vm1-000001.vmdk", o)
	if got := sha256File(t, o); got != want.SHA256 {
		t.Errorf("over TCP: sha256 %s, manifest %s", got, want.SHA256)
	}
	out := oracle.Run(t, "nbdinfo", "--size", "nbd://127.0.0.1:"+m[1]+"/vm2/vm2.vmdk")
	if strings.TrimSpace(string(out)) != "4194304" {
		t.Errorf("nbdinfo --size over TCP: %s", out)
	}
	if code := s.stop(t); code != 0 {
		t.Errorf("exit %d:\n%s", code, s.stderr)
	}
}

// servePKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate: the server's files, and a directory laid out as libnbd wants
// it (ca-cert.pem, client-cert.pem, client-key.pem).
func servePKI(t *testing.T) (ca, cert, key, clientDir string) {
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
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "serve test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) (der, key []byte) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		if key, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	write := func(dir, name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	srvDir, clientDir := t.TempDir(), t.TempDir()
	srvDER, srvKey := issue(2, "localhost", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := issue(3, "client", x509.ExtKeyUsageClientAuth)
	ca = write(srvDir, "ca.pem", "CERTIFICATE", caDER)
	cert = write(srvDir, "server.pem", "CERTIFICATE", srvDER)
	key = write(srvDir, "server.key", "PRIVATE KEY", srvKey)
	write(clientDir, "ca-cert.pem", "CERTIFICATE", caDER)
	write(clientDir, "client-cert.pem", "CERTIFICATE", cliDER)
	write(clientDir, "client-key.pem", "PRIVATE KEY", cliKey)
	return ca, cert, key, clientDir
}

// With --tls-cert/--tls-key/--tls-ca the server speaks TLS to clients with a
// certificate of the CA, refuses plain text and does not warn.
func TestServeTLS(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	ds := buildDatastore(t, serveSpec(5, 1))
	ca, cert, key, clientDir := servePKI(t)
	s := startServe(t, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca, ds.volume)
	e := s.stderr.String()
	if strings.Contains(e, "WARNING") {
		t.Errorf("a warning with TLS and client certificates:\n%s", e)
	}
	m := regexp.MustCompile(`nbds://127\.0\.0\.1:(\d+)/vm2/vm2\.vmdk\n`).FindStringSubmatch(e)
	if m == nil {
		t.Fatalf("no nbds:// URI on stderr:\n%s", e)
	}
	hostport := "127.0.0.1:" + m[1]
	out := oracle.Run(t, "nbdinfo", "--json", "nbds://"+hostport+"/vm2/vm2.vmdk?tls-certificates="+clientDir)
	var info struct {
		TLS     bool `json:"TLS"`
		Exports []struct {
			Size int64 `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if !info.TLS || len(info.Exports) != 1 || info.Exports[0].Size != 4<<20 {
		t.Errorf("nbdinfo over TLS: %s", out)
	}
	if out, _, err := oracle.RunErr(t, "nbdinfo", "--size", "nbd://"+hostport+"/vm2/vm2.vmdk"); err == nil {
		t.Errorf("a plain-text client was served: %s", out)
	}
	if code := s.stop(t); code != 0 {
		t.Errorf("exit %d:\n%s", code, s.stderr)
	}

	// TLS without a client CA: encrypted, but open to anyone — said so.
	s = startServe(t, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, ds.volume)
	if !strings.Contains(s.stderr.String(), "WARNING: listening on TCP 127.0.0.1:") || !strings.Contains(s.stderr.String(), "without --tls-ca") {
		t.Errorf("no warning about TLS without client certificates:\n%s", s.stderr)
	}
	s.stop(t)
}

// A local directory of VMDKs and a local DISK.vmdk@SNAPSHOT are served like
// a datastore's disks.
func TestServeLocal(t *testing.T) {
	oracle.Find(t, "qemu-img")
	ds := buildDatastore(t, serveSpec(5, 1))
	v := openDatastore(t, ds)
	dir := t.TempDir()
	for _, f := range ds.m.Files {
		if f.Type != "file" || !strings.HasPrefix(f.Path, "vm1/") {
			continue
		}
		src, err := v.Open(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(dir, "vm1"), 0o755)
		dst, err := os.Create(filepath.Join(dir, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, io.NewSectionReader(src, 0, src.Size())); err != nil {
			t.Fatal(err)
		}
		dst.Close()
		src.Close()
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	check := func(export, disk string) {
		t.Helper()
		o := filepath.Join(t.TempDir(), "o.raw")
		oracle.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", unixURI(sock, export), o)
		if want := manifestDisk(ds.m, disk).SHA256; sha256File(t, o) != want {
			t.Errorf("export %s: not the bytes of %s", export, disk)
		}
	}
	s := startServe(t, "--socket", sock, dir)
	check("vm1/vm1-000002.vmdk", "vm1/vm1-000002.vmdk")
	s.stop(t)
	s = startServe(t, "--socket", sock, filepath.Join(dir, "vm1", "vm1-000002.vmdk@vm1-000001"))
	check("vm1-000001.vmdk", "vm1/vm1-000001.vmdk")
	if code := s.stop(t); code != 0 {
		t.Errorf("exit %d:\n%s", code, s.stderr)
	}
}

// Raw device mappings have no data on the datastore: skipped with a note.
func TestServeSkipsRDM(t *testing.T) {
	oracle.Find(t, "nbdinfo")
	ds := buildDatastore(t, testimages.RDMSpec(5))
	sock := filepath.Join(t.TempDir(), "s.sock")
	s := startServe(t, serveArgs(ds, "--socket", sock)...)
	for _, rdm := range []string{"rdm/lun-p.vmdk", "rdm/lun-v.vmdk"} {
		if !strings.Contains(s.stderr.String(), "note: "+rdm+" skipped:") {
			t.Errorf("no note about %s:\n%s", rdm, s.stderr)
		}
	}
	var list nbdList
	out := oracle.Run(t, "nbdinfo", "--list", "--json", "nbd+unix:///?socket="+sock)
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Exports) != 3 {
		t.Errorf("%d exports, want the 3 leaves that are not RDMs:\n%s", len(list.Exports), out)
	}
	s.stop(t)
	// Named explicitly, an RDM is an error.
	code, _, stderr := runCLI(t, append(ds.cmd("serve", "--socket", sock), ds.volume, "rdm/lun-p.vmdk")...)
	if code != exitFailure || !strings.Contains(stderr, "rdm/lun-p.vmdk") {
		t.Errorf("serving an RDM: exit %d, %s", code, stderr)
	}
}

func TestServeUsageErrors(t *testing.T) {
	ds := buildDatastore(t, serveSpec(5, 1))
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no args", []string{"serve"}, exitUsage, "want VOLUME"},
		{"socket and listen", []string{"serve", "--socket", "/tmp/x", "--listen", "127.0.0.1:0", ds.volume}, exitUsage, "exclude each other"},
		{"key without cert", []string{"serve", "--tls-key", "k.pem", ds.volume}, exitUsage, "--tls-cert and --tls-key"},
		{"flag after args", []string{"serve", ds.volume, "--one-shot"}, exitUsage, `flag "--one-shot" after the arguments`},
		{"not in chain", []string{"serve", ds.volume, "vm1/vm1-000002.vmdk@vm2"}, exitUsage, `"vm2" is not in the chain`},
		{"no such disk", []string{"serve", ds.volume, "vm9/vm9.vmdk"}, exitFailure, "vm9/vm9.vmdk"},
		{"bad cert", []string{"serve", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key", ds.volume}, exitFailure, "TLS certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}
