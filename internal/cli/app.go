// Package cli is the vmfs2vhd command line: the app, its subcommands (a
// file each), flags, progress display, exit codes. Commands are thin: they
// parse, open, call a library package (vmfs, formats/..., convert) and print.
// The root package's main only calls Main.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/urfave/cli/v2"
)

// Exit codes, documented in the app's help.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitMismatch = 4
	exitBadRange = 5
)

// exitError carries an exit code through urfave/cli without calling os.Exit
// inside the app, so tests can run it.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// Set at link time by the Makefile (-X …/internal/cli.commit=...); the build
// info is the fallback.
var (
	version = ""
	commit  = ""
)

func versionString() string {
	v, c := version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	if c == "" {
		c = "unknown"
	}
	return fmt.Sprintf("%s (commit %s)", v, c)
}

const exitCodesHelp = `EXIT CODES:
   0  success
   1  failure (unreadable input, write error, interrupted)
   2  usage error
   4  verification mismatch (--verify)
   5  output complete but with zero-filled unreadable ranges (--rescue)`

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "vmfs2vhd",
		Usage:                "read VMware VMFS datastores and convert their virtual disks to VHD, VHDX, qcow2 or raw",
		Version:              versionString(),
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		// --disk and --snapshot specs contain commas.
		DisableSliceFlagSeparator: true,
		// ls -lR, convert -qj 4 …
		UseShortOptionHandling: true,
		HideHelpCommand:        true,
		CustomAppHelpTemplate:  cli.AppHelpTemplate + "\n" + exitCodesHelp + "\n",
		ExitErrHandler:         func(*cli.Context, error) {}, // main decides the exit code
		Commands: []*cli.Command{
			infoCommand(),
			lsCommand(),
			catCommand(),
			disksCommand(),
			scanCommand(),
			vmsCommand(),
			convertCommand(),
			serveCommand(),
			demoCommand(),
			mkimageCommand(),
			completionCommand(),
		},
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return &exitError{code: exitUsage, err: err}
		},
	}
	return app
}

// run executes the app and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	app := newApp(stdout, stderr)
	if completing(args) {
		// urfave/cli/v2 can panic while completing a partial flag
		// (urfave/cli#1822): a completion must never print a stack trace.
		defer func() {
			if recover() != nil {
				code = exitOK
			}
		}()
	}
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "vmfs2vhd: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

// Main runs the app with the process's arguments and standard streams,
// stops on SIGINT/SIGTERM, and returns the exit code for os.Exit.
func Main() int {
	// A soft heap limit above the live set (copy buffers, metadata caches:
	// ~40 MiB on a 4-layer chain) keeps garbage from doubling it; measured
	// on the chain workload: 53 MiB peak RSS instead of 75, in the same
	// time. GOMEMLIMIT overrides it.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(48 << 20)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args, os.Stdout, os.Stderr)
}
