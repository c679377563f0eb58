package cli

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmdk"
	"github.com/vmfs2vhd/vmfs2vhd/internal/nbd"
)

// serveMaxBuffer bounds the read buffers of all connections together (the
// server's nbd.Options.MaxBuffer): with the default 32 MiB largest request
// it is one such request, or sixteen of qemu's 2 MiB ones, and keeps the
// server within 64 MiB of RSS whatever the clients ask (bench/README.md).
const serveMaxBuffer = 32 << 20

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "export virtual disks read-only over NBD (qemu, qemu-img, nbdcopy, guestfish, nbd-client) without copying them",
		ArgsUsage: "VOLUME [DISK[@SNAPSHOT]…] | DIR [DISK[@SNAPSHOT]…] | DISK.vmdk[@SNAPSHOT]…",
		Description: `Serves disks straight off the datastore, read-only, over the Network Block Device protocol:
one export per disk, named by its descriptor path (vm1/vm1.vmdk), whose bytes are the disk with
its snapshot chain flattened. Without DISK every disk of VOLUME is exported at the leaf of its
chain (as disks lists them; raw device mappings are skipped). DISK@SNAPSHOT exports another point
of DISK's chain (a descriptor name of the chain, as convert --snapshot takes); the export is then
named by that descriptor. VOLUME may also be a local directory of VMDKs, or the arguments local
DISK.vmdk files (exported under their file names).

By default the server listens on a Unix socket only its owner can use, in a new private
directory (printed); --socket PATH puts it elsewhere (mode 0600). --listen HOST:PORT listens on
TCP instead: anyone who can connect can read the disks, unless --tls-cert/--tls-key/--tls-ca make
clients start TLS and show a certificate signed by that CA (plain-text clients are refused
whenever TLS is on). Holes and zero runs are reported through block status (nbdinfo --map,
qemu-img map, nbdcopy skip them) and never read. Writes are refused.

The exports and their URIs go to stderr; -v adds a line per connection. Ctrl-C or SIGTERM stops
the server (exit 0); --one-shot stops it once a client has come and the last one has gone.

EXAMPLES:
   vmfs2vhd serve datastore1.img
   vmfs2vhd serve --socket /tmp/ds1.sock datastore1.img vm1/vm1.vmdk
   qemu-img convert -O qcow2 'nbd+unix:///vm1/vm1.vmdk?socket=/tmp/ds1.sock' vm1.qcow2
   vmfs2vhd serve --one-shot --socket /tmp/ds1.sock datastore1.img vm1/vm1-000002.vmdk@vm1-000001.vmdk
   vmfs2vhd serve --listen 192.0.2.10:10809 --tls-cert srv.pem --tls-key srv.key --tls-ca ca.pem -e lun2.img lun1.img`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "listen on this Unix socket (mode 0600; default: a socket in a new private temporary directory)"},
			&cli.StringFlag{Name: "listen", Usage: "listen on TCP HOST:PORT instead (port 0: any free port); readable by anyone who can connect unless TLS with --tls-ca"},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate chain of the server: require TLS (STARTTLS), refuse plain-text clients"},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM private key of --tls-cert"},
			&cli.StringFlag{Name: "tls-ca", Usage: "PEM CA bundle: only clients with a certificate it signed may connect"},
			&cli.BoolFlag{Name: "one-shot", Usage: "exit once a client has connected and the last client has disconnected"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print a line when a connection opens and when it closes (export, bytes, requests, time)"},
			&cli.BoolFlag{Name: "ignore-cid", Usage: "read a chain even when a child's parentCID does not match its parent's CID"},
			extentFlag(), directFlag(),
		},
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	if err := rejectLateFlags(c); err != nil {
		return err
	}
	if c.NArg() < 1 {
		return usageErrorf("serve: want VOLUME [DISK…], DIR [DISK…] or DISK.vmdk…")
	}
	if c.String("socket") != "" && c.String("listen") != "" {
		return usageErrorf("serve: --socket and --listen exclude each other")
	}
	tlsCfg, err := serveTLS(c)
	if err != nil {
		return err
	}
	var set serveSet
	defer set.close()
	if err := set.open(c); err != nil {
		return err
	}
	exports := set.exports
	w := c.App.ErrWriter
	var logMu sync.Mutex // Logf and Event are called from several goroutines
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(w, format+"\n", args...)
	}
	opts := nbd.Options{
		TLS:       tlsCfg,
		OneShot:   c.Bool("one-shot"),
		MaxBuffer: serveMaxBuffer,
		Logf:      logf,
	}
	if c.Bool("verbose") {
		opts.Event = func(e nbd.Event) { logEvent(logf, e) }
	}
	srv, err := nbd.NewServer(exports, opts)
	if err != nil {
		return err
	}

	ln, uri, cleanup, err := serveListen(c, tlsCfg)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(w, "serving %d disk(s) read-only on %s\n", len(exports), listenerName(ln))
	for _, e := range exports {
		fmt.Fprintf(w, "  %s\n      %s\n", uri(e.Name), e.Description)
	}
	if c.Bool("one-shot") {
		fmt.Fprintf(w, "exiting after the last client disconnects (--one-shot)\n")
	} else {
		fmt.Fprintf(w, "Ctrl-C stops the server\n")
	}
	if err := srv.Serve(c.Context, ln); err != nil {
		return err
	}
	if err := c.Context.Err(); err != nil {
		fmt.Fprintf(w, "stopped\n")
	} else {
		fmt.Fprintf(w, "stopped: the last client disconnected\n")
	}
	return nil
}

func logEvent(logf func(string, ...any), e nbd.Event) {
	switch e.Kind {
	case nbd.ConnOpened:
		logf("connection %d from %s opened", e.ID, e.Remote)
	case nbd.ConnClosed:
		export := "no export"
		if e.Export != "" {
			export = fmt.Sprintf("export %q", e.Export)
		}
		tls := ""
		if e.TLS {
			tls = ", TLS"
		}
		end := ""
		if e.Err != nil {
			end = ": " + e.Err.Error()
		}
		logf("connection %d from %s closed after %v: %s%s, %d requests, %s of the disk read, %s in, %s out%s",
			e.ID, e.Remote, e.Duration.Round(time.Millisecond), export, tls, e.Requests,
			formatSize(e.DataRead), formatSize(e.BytesIn), formatSize(e.BytesOut), end)
	}
}

// serveTLS builds the TLS configuration of the flags (nil without
// --tls-cert).
func serveTLS(c *cli.Context) (*tls.Config, error) {
	cert, key, ca := c.String("tls-cert"), c.String("tls-key"), c.String("tls-ca")
	switch {
	case cert == "" && key == "" && ca == "":
		return nil, nil
	case cert == "" || key == "":
		return nil, usageErrorf("serve: TLS needs both --tls-cert and --tls-key")
	}
	return nbd.TLSConfig(cert, key, ca)
}

// serveListen opens the listener the flags ask for. uri gives the URI of
// an export; cleanup closes the listener and removes what it created.
func serveListen(c *cli.Context, tlsCfg *tls.Config) (ln net.Listener, uri func(string) string, cleanup func(), err error) {
	w := c.App.ErrWriter
	if addr := c.String("listen"); addr != "" {
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, nil, nil, err
		}
		switch {
		case tlsCfg == nil:
			fmt.Fprintf(w, "WARNING: listening on TCP %s without TLS: anyone who can connect can read these disks, and the data crosses the network in clear. Use a Unix socket, or --tls-cert/--tls-key/--tls-ca to require client certificates.\n", ln.Addr())
		case tlsCfg.ClientCAs == nil:
			fmt.Fprintf(w, "WARNING: listening on TCP %s with TLS but without --tls-ca: the traffic is encrypted, but anyone who can connect can read these disks.\n", ln.Addr())
		}
		scheme := "nbd"
		if tlsCfg != nil {
			scheme = "nbds"
		}
		host := tcpHost(ln.Addr())
		uri = func(name string) string {
			return (&url.URL{Scheme: scheme, Host: host, Path: "/" + name}).String()
		}
		return ln, uri, func() { ln.Close() }, nil
	}
	sock, dir := c.String("socket"), ""
	if sock == "" {
		if dir, err = os.MkdirTemp("", "vmfs2vhd-serve-"); err != nil {
			return nil, nil, nil, err
		}
		sock = filepath.Join(dir, "nbd.sock")
	}
	if ln, err = nbd.ListenUnix(sock); err != nil {
		if dir != "" {
			os.Remove(dir)
		}
		return nil, nil, nil, err
	}
	scheme := "nbd+unix"
	if tlsCfg != nil {
		scheme = "nbds+unix"
	}
	sock = ln.Addr().String()
	uri = func(name string) string {
		return (&url.URL{Scheme: scheme, Path: "/" + name, RawQuery: "socket=" + queryEscape(sock)}).String()
	}
	return ln, uri, func() {
		ln.Close()
		if dir != "" {
			os.Remove(dir)
		}
	}, nil
}

// queryEscape escapes a socket path for an NBD URI's query, leaving the
// slashes readable.
func queryEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "%2F", "/")
}

// tcpHost is the HOST:PORT of a listener for URIs: the machine's name when
// it listens on every address.
func tcpHost(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	host := ta.IP.String()
	if ta.IP.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return net.JoinHostPort(host, fmt.Sprint(ta.Port))
}

func listenerName(ln net.Listener) string {
	if ln.Addr().Network() == "unix" {
		return "Unix socket " + ln.Addr().String()
	}
	return "TCP " + ln.Addr().String()
}

// serveSet is the disks to export and what to close when done.
type serveSet struct {
	exports []nbd.Export
	closers []func() error
}

func (s *serveSet) close() {
	for _, f := range slices.Backward(s.closers) {
		f()
	}
}

func (s *serveSet) add(e nbd.Export, close func() error) {
	s.exports = append(s.exports, e)
	s.closers = append(s.closers, close)
}

// open opens the disks the arguments name: VOLUME [DISK…], DIR [DISK…] or
// DISK.vmdk…. Whatever it opened is closed by close, even on an error.
func (s *serveSet) open(c *cli.Context) error {
	first := c.Args().First()
	st, err := os.Stat(first)
	switch {
	case err == nil && st.IsDir():
		if len(c.StringSlice("extent")) > 0 {
			return usageErrorf("serve: -e/--extent goes with VOLUME")
		}
		names, err := localVMDKs(first)
		if err != nil {
			return err
		}
		return s.openSet(c, vmdk.DirFS(first), names, c.Args().Tail(), first)
	case isLocalVMDK(first):
		if len(c.StringSlice("extent")) > 0 {
			return usageErrorf("serve: -e/--extent goes with VOLUME")
		}
		return s.openLocal(c, c.Args().Slice())
	}
	v, err := openVolume(c, first)
	if err != nil {
		return err
	}
	// The volume stays open while its disks are served, and is closed
	// after them.
	s.closers = append(s.closers, v.Close)
	warnIfLive(c, v)
	names, err := volumeVMDKs(v)
	if err != nil {
		return err
	}
	return s.openSet(c, volumeFS(v), names, c.Args().Tail(), first)
}

// isLocalVMDK tells a local DISK.vmdk[@SNAPSHOT] argument from a VOLUME
// image that happens to be named .vmdk (the flat disk of a nested ESXi):
// a disk is a text descriptor (small) or a hosted sparse file (KDMV, COWD).
func isLocalVMDK(arg string) bool {
	name, _, _ := strings.Cut(filepath.Base(arg), "@")
	if !strings.EqualFold(filepath.Ext(name), ".vmdk") {
		return false
	}
	f, err := os.Open(arg)
	if err != nil {
		// DISK.vmdk@SNAPSHOT, or a missing file (reported by the open).
		return true
	}
	defer f.Close()
	var magic [4]byte
	if st, err := f.Stat(); err != nil || st.Size() < maxLocalDescriptor {
		return true
	}
	if _, err := f.ReadAt(magic[:], 0); err != nil {
		return true
	}
	return string(magic[:]) == "KDMV" || string(magic[:]) == "COWD"
}

// maxLocalDescriptor: a .vmdk smaller than this is taken for a descriptor,
// never for a volume (a VMFS volume is at least hundreds of MiB).
const maxLocalDescriptor = 1 << 20

// openSet opens the disks of fsys the args name, or without args every
// disk (the leaf of each chain; RDMs and chains that cannot be opened are
// skipped with a note).
func (s *serveSet) openSet(c *cli.Context, fsys vmdk.FS, names, args []string, where string) error {
	if len(args) == 0 {
		infos, err := vmdk.Scan(fsys, names)
		if err != nil {
			return err
		}
		for _, info := range infos {
			e, closeFn, err := openServeDisk(c, fsys, info.Path, "", info.Path, info.Provisioning)
			if err != nil {
				fmt.Fprintf(c.App.ErrWriter, "note: %s skipped: %v\n", info.Path, err)
				continue
			}
			s.add(e, closeFn)
		}
		if len(s.exports) == 0 {
			return fmt.Errorf("serve: %s: no disk to export (%d found, none readable)", where, len(infos))
		}
		return nil
	}
	seen := map[string]bool{}
	for _, arg := range args {
		name, snap := splitSnapshot(fsys, strings.Trim(filepath.ToSlash(arg), "/"))
		e, closeFn, err := openServeDisk(c, fsys, name, snap, arg, "")
		if err != nil {
			return err
		}
		if seen[e.Name] {
			fmt.Fprintf(c.App.ErrWriter, "note: %s: %s is already exported\n", arg, e.Name)
			closeFn()
			continue
		}
		seen[e.Name] = true
		s.add(e, closeFn)
	}
	return nil
}

// openLocal opens local DISK.vmdk[@SNAPSHOT] files, exported under their
// file names.
func (s *serveSet) openLocal(c *cli.Context, args []string) error {
	seen := map[string]string{}
	for _, arg := range args {
		abs, err := filepath.Abs(arg)
		if err != nil {
			return err
		}
		fsys := vmdk.DirFS(filepath.Dir(abs))
		name, snap := splitSnapshot(fsys, filepath.Base(abs))
		e, closeFn, err := openServeDisk(c, fsys, name, snap, arg, "")
		if err != nil {
			return err
		}
		if prev, ok := seen[e.Name]; ok {
			closeFn()
			return usageErrorf("serve: %s and %s would both be exported as %q; serve their directory instead", prev, arg, e.Name)
		}
		seen[e.Name] = arg
		s.add(e, closeFn)
	}
	return nil
}

// splitSnapshot splits DISK@SNAPSHOT, unless the whole argument is a file
// of fsys (a name with an @ in it).
func splitSnapshot(fsys vmdk.FS, arg string) (name, snap string) {
	i := strings.LastIndex(arg, "@")
	if i < 0 {
		return arg, ""
	}
	if f, err := fsys.Open(arg); err == nil {
		f.Close()
		return arg, ""
	}
	return arg[:i], arg[i+1:]
}

// openServeDisk opens descriptor name of fsys at chain point snap ("" for
// the leaf) as an export named by that point's descriptor and described by
// its size, provisioning (prov, or scanned when "") and chain.
func openServeDisk(c *cli.Context, fsys vmdk.FS, name, snap, display, prov string) (nbd.Export, func() error, error) {
	d, err := vmdk.Open(fsys, name, vmdk.Options{IgnoreCID: c.Bool("ignore-cid")})
	if err != nil {
		return nbd.Export{}, nil, fmt.Errorf("%s: %w", display, err)
	}
	chain := d.Chain()
	point := 0
	if snap != "" {
		point = -1
		for i, p := range chain {
			if p == snap || path.Base(p) == snap || strings.TrimSuffix(path.Base(p), ".vmdk") == snap {
				point = i
			}
		}
		if point < 0 {
			d.Close()
			return nbd.Export{}, nil, usageErrorf("serve: %s: %q is not in the chain of %s (%s)", display, snap, name, strings.Join(chain, " → "))
		}
	}
	img, err := d.View(point)
	if err != nil {
		d.Close()
		return nbd.Export{}, nil, err
	}
	if prov == "" {
		if infos, err := vmdk.Scan(fsys, []string{chain[point]}); err == nil && len(infos) == 1 {
			prov = infos[0].Provisioning
		}
	}
	desc := formatSize(img.Size())
	if prov != "" {
		desc += ", " + prov
	}
	if len(chain[point:]) == 1 {
		desc += ", no snapshots"
	} else {
		desc += ", chain " + strings.Join(chain[point:], " → ")
	}
	return nbd.Export{Name: chain[point], Description: desc, Image: img}, d.Close, nil
}
