package main

import "github.com/urfave/cli/v2"

func mkimageCommand() *cli.Command {
	return &cli.Command{
		Name:  "mkimage",
		Usage: "build a synthetic VMFS datastore image (for tests and demos)",
		Action: func(c *cli.Context) error {
			return usageErrorf("mkimage: not implemented yet")
		},
	}
}
