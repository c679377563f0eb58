package vmx

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"testing/iotest"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		text     string
		want     map[string]string // key (any case) -> value
		absent   []string
		lines    map[string]int
		encoding string
		warnings []string // substrings
	}{
		{
			name:  "esxi shape",
			text:  ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nmemSize = \"4096\"\ndisplayName = \"web\"\n",
			want:  map[string]string{"MEMSIZE": "4096", "memsize": "4096", "displayname": "web", ".Encoding": "UTF-8"},
			lines: map[string]int{"memsize": 3}, encoding: "UTF-8",
		},
		{
			name:  "crlf, comments, blanks, shebang, bare values, spaces",
			text:  "#!/usr/bin/vmware\r\n\r\n# a comment\r\n  numvcpus=2\r\nmemsize =   1024   # trailing comment\r\nguestOS\t=\t\"ubuntu-64\"  # c\r\nempty = \"\"\r\nnothing =\r\n",
			want:  map[string]string{"numvcpus": "2", "memsize": "1024", "guestos": "ubuntu-64", "empty": "", "nothing": ""},
			lines: map[string]int{"numvcpus": 4, "guestos": 6},
		},
		{
			name:     "duplicate keys: the last wins",
			text:     "memSize = \"1024\"\nMEMSIZE = \"2048\"\n",
			want:     map[string]string{"memsize": "2048"},
			lines:    map[string]int{"memsize": 2},
			warnings: []string{`line 2: key "MEMSIZE" repeats line 1`},
		},
		{
			name: "escapes",
			text: "displayName = \"a |22quoted|22 |7C pipe |23 hash|0Anl |zz |2\"\nx = \"|\"\n",
			want: map[string]string{"displayname": "a \"quoted\" | pipe # hash\nnl |zz |2", "x": "|"},
		},
		{
			name: "windows-1252 with escape of a high byte",
			text: ".encoding = \"windows-1252\"\ndisplayName = \"B\xfcro \x80 |E9t|E9\"\n",
			want: map[string]string{"displayname": "Büro € été"}, encoding: "windows-1252",
		},
		{
			name: "ISO-8859-1: 0x80 stays a C1 control",
			text: "displayName = \"\xe4\x80\"\n.encoding = \"ISO-8859-1\"\n",
			want: map[string]string{"displayname": "ä\u0080"}, encoding: "ISO-8859-1",
		},
		{
			name:     "no encoding, invalid UTF-8: windows-1252",
			text:     "displayName = \"Caf\xe9\"\n",
			want:     map[string]string{"displayname": "Café"},
			warnings: []string{"not valid UTF-8; read as windows-1252"},
		},
		{
			name: "UTF-8 BOM, UTF-8 name, NUL padding",
			text: "\xef\xbb\xbfdisplayName = \"日本語 VM\"\n\x00\x00\x00garbage",
			want: map[string]string{"displayname": "日本語 VM"},
		},
		{
			name: "unknown encoding with ASCII values is fine",
			text: ".encoding = \"Shift_JIS\"\nmemsize = \"64\"\n",
			want: map[string]string{"memsize": "64"}, encoding: "Shift_JIS",
		},
		{
			name:   "empty file",
			text:   "",
			absent: []string{"memsize", ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseBytes([]byte(tt.text), "t.vmx")
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				got, ok := f.Get(k)
				if !ok || got != v {
					t.Errorf("Get(%q) = %q, %v; want %q", k, got, ok, v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := f.Get(k); ok {
					t.Errorf("Get(%q) = %q, want absent", k, v)
				}
			}
			for k, l := range tt.lines {
				if e, _ := f.Entry(k); e.Line != l {
					t.Errorf("line of %q = %d, want %d", k, e.Line, l)
				}
			}
			if f.Encoding != tt.encoding {
				t.Errorf("encoding %q, want %q", f.Encoding, tt.encoding)
			}
			ws := strings.Join(f.Warnings, "\n")
			for _, w := range tt.warnings {
				if !strings.Contains(ws, w) {
					t.Errorf("no warning mentions %q: %q", w, ws)
				}
			}
			if len(tt.warnings) == 0 && len(f.Warnings) > 0 {
				t.Errorf("unexpected warnings %q", f.Warnings)
			}
			// Via Parse, through a reader that returns one byte at a time.
			g, err := Parse(iotest.OneByteReader(strings.NewReader(tt.text)), "t.vmx")
			if err != nil || g.Len() != f.Len() {
				t.Errorf("Parse: %v, %d keys, want %d", err, g.Len(), f.Len())
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		line int
		want error
		msg  string
	}{
		{"no equals", "memsize = \"1\"\nthis is not a key\n", 2, ErrSyntax, "expected key"},
		{"no key", "memsize = \"1\"\n= \"x\"\n", 2, ErrSyntax, "expected key"},
		{"key with blank", "mem size = \"1\"\n", 1, ErrSyntax, "contains blanks"},
		{"unterminated quote", "\n\ndisplayName = \"abc\n", 3, ErrSyntax, "no closing double quote"},
		{"text after quote", "displayName = \"abc\" def\n", 1, ErrSyntax, "after the closing double quote"},
		{"quote in bare value", "displayName = ab\"c\n", 1, ErrSyntax, "unquoted value"},
		{"unsupported encoding", ".encoding = \"Shift_JIS\"\ndisplayName = \"\x93\xfa\"\n", 2, ErrEncoding, "Shift_JIS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseBytes([]byte(tt.text), "dir/bad.vmx")
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.Line != tt.line || e.File != "dir/bad.vmx" {
				t.Fatalf("err = %#v, want line %d of dir/bad.vmx", err, tt.line)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), "dir/bad.vmx: line ") {
				t.Errorf("message %q lacks %q or the place", err.Error(), tt.msg)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	big := bytes.Repeat([]byte("# padding padding padding padding padding padding\n"), MaxFileSize/50+1)
	if _, err := ParseBytes(big, "big.vmx"); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "big.vmx") {
		t.Errorf("ParseBytes: %v, want ErrTooLarge naming the file", err)
	}
	if _, err := Parse(bytes.NewReader(big), "big.vmx"); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Parse: %v, want ErrTooLarge", err)
	}
	ok := big[:MaxFileSize]
	if _, err := ParseBytes(ok, "max.vmx"); err != nil {
		t.Errorf("a file of exactly MaxFileSize: %v", err)
	}
}

func TestParseDoesNotModifyInput(t *testing.T) {
	in := []byte("displayName = \"a|22b\"\r\nx = \"\xe9\"\n")
	cp := bytes.Clone(in)
	if _, err := ParseBytes(in, "t.vmx"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, cp) {
		t.Error("ParseBytes modified its input")
	}
}

func TestNormalizeMAC(t *testing.T) {
	for in, want := range map[string]string{
		"00:50:56:9A:1B:2C":   "00:50:56:9a:1b:2c",
		"00-0C-29-aa-bb-cc":   "00:0c:29:aa:bb:cc",
		"0050569a1b2c":        "00:50:56:9a:1b:2c",
		" 00:50:56:00:00:01 ": "00:50:56:00:00:01",
		"00:50:56:9a:1b":      "",
		"00:50:56:9a:1b:zz":   "",
		"":                    "",
	} {
		got, ok := NormalizeMAC(in)
		if got != want || ok != (want != "") {
			t.Errorf("NormalizeMAC(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func TestResolvePath(t *testing.T) {
	tests := []struct {
		dir, name          string
		ds, path, hostPath string
	}{
		{"vm", "vm.vmdk", "", "vm/vm.vmdk", ""},
		{"vm", "sub/x.vmdk", "", "vm/sub/x.vmdk", ""},
		{"vm", "../other/x.vmdk", "", "other/x.vmdk", ""},
		{"vm", `..\other\x.vmdk`, "", "other/x.vmdk", ""},
		{"vm", "../../x.vmdk", "", "", ""},
		{"vm", "/vmfs/volumes/datastore2/vm/x.vmdk", "datastore2", "vm/x.vmdk", ""},
		{"vm", "/vmfs/volumes/5a4b3c2d-11223344-aabb-001122334455/a b/x.vmdk", "5a4b3c2d-11223344-aabb-001122334455", "a b/x.vmdk", ""},
		{"vm", `C:\Users\Jo\VMs\x.vmdk`, "", "vm/x.vmdk", `C:\Users\Jo\VMs\x.vmdk`},
		{"vm", `\\nas\vms\x.vmdk`, "", "vm/x.vmdk", `\\nas\vms\x.vmdk`},
		{"vm", "/Users/jo/x.vmdk", "", "vm/x.vmdk", "/Users/jo/x.vmdk"},
		{".", "x.vmdk", "", "x.vmdk", ""},
	}
	for _, tt := range tests {
		ds, p, hp := ResolvePath(tt.dir, tt.name)
		if ds != tt.ds || p != tt.path || hp != tt.hostPath {
			t.Errorf("ResolvePath(%q, %q) = %q, %q, %q; want %q, %q, %q", tt.dir, tt.name, ds, p, hp, tt.ds, tt.path, tt.hostPath)
		}
	}
}
