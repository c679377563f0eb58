package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

const bashCompletion = `# bash completion for vmfs2vhd: source this file, or put it in /etc/bash_completion.d/
_vmfs2vhd_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
  case "$prev" in
    -f|--format) COMPREPLY=($(compgen -W "raw vhd vhdx qcow2" -- "$cur")); return ;;
    --subformat) COMPREPLY=($(compgen -W "dynamic fixed" -- "$cur")); return ;;
    --compat) COMPREPLY=($(compgen -W "1.1 0.10" -- "$cur")); return ;;
    --vmfs) COMPREPLY=($(compgen -W "3 5 6" -- "$cur")); return ;;
  esac
  local words
  words=$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:$COMP_CWORD-1}" --generate-bash-completion 2>/dev/null)
  if [[ "$cur" == -* || -z "$words" ]]; then
    COMPREPLY=($(compgen -W "$words" -- "$cur") $(compgen -f -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [[ ${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
complete -o filenames -F _vmfs2vhd_complete vmfs2vhd
`

const zshCompletion = `#compdef vmfs2vhd
# zsh completion for vmfs2vhd: put this file in a directory of $fpath as _vmfs2vhd
_vmfs2vhd() {
  local -a opts
  case "${words[CURRENT-1]}" in
    -f|--format) compadd raw vhd vhdx qcow2; return ;;
    --subformat) compadd dynamic fixed; return ;;
    --compat) compadd 1.1 0.10; return ;;
  esac
  opts=("${(@f)$(${words[1]} ${words[2,CURRENT-1]} --generate-bash-completion 2>/dev/null)}")
  if [[ -n "${opts[1]}" ]]; then
    _describe 'values' opts
  fi
  _files
}
compdef _vmfs2vhd vmfs2vhd
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Description: `Prints a completion script: subcommands, flags and format names complete.

EXAMPLES:
   source <(vmfs2vhd completion bash)
   vmfs2vhd completion fish > ~/.config/fish/completions/vmfs2vhd.fish`,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("completion: want bash, zsh or fish")
			}
			switch c.Args().First() {
			case "bash":
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := fmt.Fprint(c.App.Writer, zshCompletion)
				return err
			case "fish":
				s, err := c.App.ToFishCompletion()
				if err != nil {
					return err
				}
				_, err = fmt.Fprint(c.App.Writer, s)
				return err
			}
			return usageErrorf("completion: shell %q: want bash, zsh or fish", c.Args().First())
		},
	}
}

// completing reports whether the shell asks for completions.
func completing(args []string) bool {
	for _, a := range args {
		if a == "--generate-bash-completion" {
			return true
		}
	}
	return false
}
