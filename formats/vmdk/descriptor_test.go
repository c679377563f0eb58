package vmdk

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDescriptor(t *testing.T) {
	const ext = "RW 2048 VMFS \"x-flat.vmdk\"\n"
	cases := []struct {
		name  string
		text  string
		check func(t *testing.T, d *Descriptor)
	}{
		{"VMware", "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"vmfs\"\n\n# Extent description\n" + ext + "\n# The Disk Data Base\n#DDB\n\nddb.thinProvisioned = \"1\"\nddb.uuid = \"60 00 C2 9a 5b 04 8a 1e-81 5f 43 23 1f 6c 0c 1c\"\n",
			func(t *testing.T, d *Descriptor) {
				if d.CID != 0xfffffffe || d.ParentCID != NoParentCID || d.CreateType != "vmfs" || len(d.Extents) != 1 || d.Extents[0].File != "x-flat.vmdk" || d.Extents[0].Sectors != 2048 {
					t.Errorf("%+v", d)
				}
				if v, _ := d.DDBValue("THINprovisioned"); v != "1" {
					t.Errorf("thin %q", v)
				}
				if v, _ := d.DDBValue("ddb.uuid"); !strings.HasPrefix(v, "60 00") {
					t.Errorf("uuid %q", v)
				}
			}},
		{"CRLF and trailing blanks", "version=1 \r\nCID=12345678\r\ncreateType=\"vmfs\"\r\n# The Disk Data Base \r\n" + strings.ReplaceAll(ext, "\n", "\r\n"),
			func(t *testing.T, d *Descriptor) {
				if d.CID != 0x12345678 || d.Version != 1 || d.Extents[0].File != "x-flat.vmdk" {
					t.Errorf("%+v", d)
				}
			}},
		{"NUL padding", "version=1\ncreateType=\"monolithicFlat\"\n" + "RW 10 FLAT \"a-flat.vmdk\" 0\n" + strings.Repeat("\x00", 300) + "garbage=\"",
			func(t *testing.T, d *Descriptor) {
				if d.CreateType != "monolithicFlat" || d.Extents[0].Offset != 0 || d.Extents[0].Type != "FLAT" {
					t.Errorf("%+v", d)
				}
			}},
		{"spaces around = and key case", "VERSION = 1\nCREATETYPE = \"vmfs\"\n  parentcid\t=  abcdef01\ncid=1\n" + ext,
			func(t *testing.T, d *Descriptor) {
				if d.CreateType != "vmfs" || d.ParentCID != 0xabcdef01 || d.CID != 1 || !d.HasParentCID {
					t.Errorf("%+v", d)
				}
			}},
		{"parentCID before CID", "parentCID=00000002\nCID=00000001\n" + ext,
			func(t *testing.T, d *Descriptor) {
				if d.CID != 1 || d.ParentCID != 2 {
					t.Errorf("%+v", d)
				}
			}},
		{"UTF-8 name with spaces", "createType=\"vmfs\"\nRW 2048 VMFS \"ünï cödé-flat.vmdk\"\nparentFileNameHint=\"my vm/ünï.vmdk\"\n",
			func(t *testing.T, d *Descriptor) {
				if d.Extents[0].File != "ünï cödé-flat.vmdk" || d.ParentFileNameHint != "my vm/ünï.vmdk" {
					t.Errorf("%+v", d)
				}
			}},
		{"windows-1252 name", "encoding=\"windows-1252\"\nRW 8 FLAT \"caf\xe9 \x80-flat.vmdk\" 0\n",
			func(t *testing.T, d *Descriptor) {
				if d.Extents[0].File != "café €-flat.vmdk" {
					t.Errorf("%q", d.Extents[0].File)
				}
			}},
		{"ddb.encoding", "ddb.encoding = \"windows-1252\"\nRW 8 FLAT \"\xe9-flat.vmdk\" 0\n",
			func(t *testing.T, d *Descriptor) {
				if d.Extents[0].File != "é-flat.vmdk" {
					t.Errorf("%q", d.Extents[0].File)
				}
			}},
		{"device extent with extra fields", "RW 2048 FLAT \"\\\\.\\PhysicalDrive1\" 63 partUUID devID\n",
			func(t *testing.T, d *Descriptor) {
				x := d.Extents[0]
				if x.Offset != 63 || len(x.Extra) != 2 || x.File != `\\.\PhysicalDrive1` {
					t.Errorf("%+v", x)
				}
			}},
		{"ZERO, RDONLY, NOACCESS, lower case", "rw 10 zero\nRDONLY 20 SPARSE \"s.vmdk\"\nNOACCESS 30 FLAT \"n\" 0\n",
			func(t *testing.T, d *Descriptor) {
				if len(d.Extents) != 3 || d.Extents[0].Type != "ZERO" || d.Extents[0].Access != "RW" || d.Extents[1].Access != "RDONLY" || d.Extents[2].Access != "NOACCESS" || d.Size() != 60*512 {
					t.Errorf("%+v", d.Extents)
				}
			}},
		{"comments anywhere and = in names", "# a\n  # b\nRW 8 FLAT \"a=b.vmdk\" 0\n#c\nparentFileNameHint=\"x=y.vmdk\"\n",
			func(t *testing.T, d *Descriptor) {
				if d.Extents[0].File != "a=b.vmdk" || d.ParentFileNameHint != "x=y.vmdk" {
					t.Errorf("%+v", d)
				}
			}},
		{"change tracking section", "version=3\nchangeTrackPath=\"x-ctk.vmdk\"\n# Change Tracking File\n" + ext,
			func(t *testing.T, d *Descriptor) {
				if d.Version != 3 || d.Header["changetrackpath"] != "x-ctk.vmdk" {
					t.Errorf("%+v", d)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := ParseDescriptor("t.vmdk", []byte(c.text))
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, d)
		})
	}
}

func TestParseDescriptorErrors(t *testing.T) {
	cases := []struct {
		name, text, want string
		line             int
		sentinel         error
	}{
		{"no =", "version=1\nhello world\n", "expected key=value", 2, ErrSyntax},
		{"bad CID", "\n\nCID=xyz\n", "hex", 3, ErrSyntax},
		{"bad version", "version=one\n", "decimal", 1, ErrSyntax},
		{"unterminated quote", "createType=\"vmfs\n", "double quotes", 1, ErrSyntax},
		{"unterminated name", "RW 8 FLAT \"a.vmdk 0\n", "closing quote", 1, ErrSyntax},
		{"bad offset", "RW 8 FLAT \"a.vmdk\" x\n", "start sector", 1, ErrSyntax},
		{"zero sectors", "RW 0 FLAT \"a.vmdk\" 0\n", "positive sector count", 1, ErrSyntax},
		{"huge sectors", "RW 99999999999999999999 FLAT \"a.vmdk\" 0\n", "positive sector count", 1, ErrSyntax},
		{"binary", "\x01\x02\xff\xfe\n", "expected key=value", 1, ErrSyntax},
		{"GBK name", "encoding=\"GBK\"\nRW 8 FLAT \"\xc4\xe3-flat.vmdk\" 0\n", "GBK", 2, ErrUnsupported},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseDescriptor("bad.vmdk", []byte(c.text))
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, c.sentinel) {
				t.Fatalf("err %v", err)
			}
			if e.Line != c.line || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "bad.vmdk") {
				t.Errorf("err %q (line %d), want line %d and %q", err, e.Line, c.line, c.want)
			}
		})
	}
}
