package nbd_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/vmfs2vhd/vmfs2vhd/formats"
	"github.com/vmfs2vhd/vmfs2vhd/internal/nbd"
)

// How the CLI's serve command wires images to the server: a Unix socket
// only its owner can use, Ctrl-C to stop, one line per connection.
func Example() {
	var disk formats.Image // from vmfs.Volume.Open + vmdk.Open
	if disk == nil {
		return
	}
	s, err := nbd.NewServer([]nbd.Export{
		{Name: "web01", Description: "web01/web01.vmdk on datastore1", Image: disk},
	}, nbd.Options{
		OneShot: false, // --one-shot
		Logf: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, format+"\n", args...)
		},
		Event: func(e nbd.Event) {
			if e.Kind == nbd.ConnClosed {
				fmt.Fprintf(os.Stderr, "connection %d (%s) closed: export %q, %d bytes read in %v\n",
					e.ID, e.Remote, e.Export, e.DataRead, e.Duration)
			}
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	ln, err := nbd.ListenUnix("/run/user/1000/vmfs2vhd.sock") // mode 0600
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fmt.Fprintf(os.Stderr, "serving nbd+unix:///web01?socket=%s\n", ln.Addr())
	if err := s.Serve(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}
