package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/testimages"
)

// runCLI runs the app in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"vmfs2vhd"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// The acceptance command builds exactly testimages.IssueSpec, whose volumes
// testimages' oracle tests judge with debugvmfs, debugvmfs6 and qemu-img.
func TestMkimageAcceptanceCommand(t *testing.T) {
	for _, ver := range []string{"5", "6"} {
		t.Run("vmfs"+ver, func(t *testing.T) {
			dir := t.TempDir()
			man := filepath.Join(dir, "m.json")
			code, _, stderr := runCLI(t, "mkimage", "--vmfs", ver,
				"--disk", "vm1/vm1.vmdk,type=thin,size=64MiB,fill=30",
				"--disk", "vm2/vm2.vmdk,type=lazy,size=32MiB,fill=50",
				"--disk", "vm3/vm3.vmdk,type=eager,size=16MiB",
				"--snapshot", "vm1/vm1.vmdk,fill=5", "--snapshot", "vm1/vm1.vmdk,fill=5",
				"--manifest", man, filepath.Join(dir, "v.img"))
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var got testimages.Manifest
			b, err := os.ReadFile(man)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			v := map[string]int{"5": 5, "6": 6}[ver]
			want, err := testimages.Build(testimages.IssueSpec(v), filepath.Join(dir, "ref.img"))
			if err != nil {
				t.Fatal(err)
			}
			want.Images = got.Images
			if !reflect.DeepEqual(&got, want) {
				t.Errorf("manifest differs from testimages.IssueSpec(%d)'s", v)
			}
			if len(got.Disks) != 5 || got.Disks[4].Path != "vm1/vm1-000002.vmdk" || len(got.Disks[4].Chain) != 3 {
				t.Errorf("disks: %+v", got.Disks)
			}
		})
	}
}

func TestMkimageUsageErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "x.img")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad type", []string{"mkimage", "--disk", "a/a.vmdk,type=thn,size=1MiB", out}, `type="thn"`},
		{"missing size", []string{"mkimage", "--disk", "a/a.vmdk,type=thin", out}, "field size is required"},
		{"bad size", []string{"mkimage", "--disk", "a/a.vmdk,type=thin,size=12QB", out}, "field size"},
		{"unaligned size", []string{"mkimage", "--disk", "a/a.vmdk,type=thin,size=1000", out}, "multiple of 512"},
		{"bad fill", []string{"mkimage", "--disk", "a/a.vmdk,type=thin,size=1MiB,fill=150", out}, "fill"},
		{"unknown field", []string{"mkimage", "--disk", "a/a.vmdk,type=thin,size=1MiB,colour=red", out}, `unknown field "colour"`},
		{"bad delta", []string{"mkimage", "--disk", "a/a.vmdk,type=thin,size=1MiB", "--snapshot", "a/a.vmdk,delta=qcow", out}, `delta="qcow"`},
		{"bad version", []string{"mkimage", "--vmfs", "4", out}, "--vmfs 4"},
		{"flag after args", []string{"mkimage", out, "--vmfs", "6"}, `flag "--vmfs" after the arguments`},
		{"no output", []string{"mkimage"}, "want exactly one OUT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, exitUsage, tc.want)
			}
		})
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a usage error left %s behind", out)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"512", 512, false}, {"64MiB", 64 << 20, false}, {"64Mi", 64 << 20, false}, {"1.5GiB", 3 << 29, false},
		{"2TiB", 2 << 40, false}, {"1.1KiB", 0, true}, {"64MB", 0, true}, {"-1", 0, true}, {"", 0, true},
	} {
		got, err := parseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// Every command's help shows an example; completion never panics, even on
// the partial flags that make urfave/cli/v2 panic.
func TestHelpAndCompletion(t *testing.T) {
	app := newApp(nil, nil)
	for _, c := range app.Commands {
		if c.Name == "help" {
			continue
		}
		code, out, stderr := runCLI(t, c.Name, "--help")
		if code != 0 || !strings.Contains(out, "EXAMPLE") {
			t.Errorf("%s --help: exit %d, no example line:\n%s%s", c.Name, code, out, stderr)
		}
	}
	for _, args := range [][]string{
		{"--generate-bash-completion"},
		{"convert", "--generate-bash-completion"},
		{"convert", "--fo", "--generate-bash-completion"},
		{"convert", "-", "--generate-bash-completion"},
		{"mkimage", "--disk", "--generate-bash-completion"},
	} {
		if code, _, stderr := runCLI(t, args...); code != 0 || strings.Contains(stderr, "panic") {
			t.Errorf("%v: exit %d: %s", args, code, stderr)
		}
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		if code, out, _ := runCLI(t, "completion", sh); code != 0 || !strings.Contains(out, "vmfs2vhd") {
			t.Errorf("completion %s: exit %d", sh, code)
		}
	}
	if code, _, _ := runCLI(t, "completion", "tcsh"); code != exitUsage {
		t.Errorf("completion tcsh: exit %d, want %d", code, exitUsage)
	}
}
