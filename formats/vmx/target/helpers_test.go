package target

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmfs2vhd/vmfs2vhd/formats/vmx"
)

// testdataVM builds the VM of ../testdata/<name>.vmx (and .vmsd).
func testdataVM(t *testing.T, name string) *vmx.VM {
	t.Helper()
	parse := func(file string) *vmx.File {
		data, err := os.ReadFile(filepath.Join("..", "testdata", file))
		if err != nil {
			if os.IsNotExist(err) && filepath.Ext(file) == ".vmsd" {
				return nil
			}
			t.Fatal(err)
		}
		f, err := vmx.ParseBytes(data, file)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	return vmx.Build(name+"/"+name+".vmx", parse(name+".vmx"), parse(name+".vmsd"))
}
