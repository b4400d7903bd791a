package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/nodecmd"
	"github.com/meshca/meshca/internal/text"
)

// writeJSON writes v as indented JSON; an empty list is [] (never null), so
// that scripts can always read a list.
func writeJSON(w io.Writer, v any) error {
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
		v = []struct{}{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exactArgs is nodecmd.ExactArgs: one message for every command.
var exactArgs = nodecmd.ExactArgs

// group is a command that only holds subcommands: an unknown subcommand is
// an error (exit 1), not a help page.
func group(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q for %q (see %s --help)", args[0], cmd.CommandPath(), cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
}

// readAllLimited is nodecmd.ReadAllLimited.
var readAllLimited = nodecmd.ReadAllLimited

// esc escapes one field of text output that came from outside: a node
// name from a request, a proxy's NACK message, an access-log field, an
// audit detail. Newlines and tabs are escaped too, so a field cannot forge
// rows or columns.
func esc(s string) string { return text.Escape(s) }

// output is stdout as the commands see it: in text mode every write goes
// through text.Writer, so no control character reaches the terminal even
// from a field printed without esc; -o json passes unchanged (JSON already
// escapes control characters).
type output struct {
	g   *globals
	raw io.Writer
	esc *text.Writer
}

func (o *output) Write(p []byte) (int, error) {
	if o.g.output == "json" {
		return o.raw.Write(p)
	}
	return o.esc.Write(p)
}

// Flush writes what the escaping writer still holds.
func (o *output) Flush() error { return o.esc.Flush() }
