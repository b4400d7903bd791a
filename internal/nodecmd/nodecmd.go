// Package nodecmd holds the commands that run on a node rather than
// against meshca's admin API: meshca bootstrap (and bootstrap renew), which
// joins a node and keeps its certificate renewed for file-based SDS, and
// meshca agent, the node agent.
//
// It imports nothing of the server (cfssl, zlint, the store, bbolt, the
// etcd client, the admin API), nor Envoy's bootstrap and config protos or
// a YAML library (envoy.yaml is rendered from templates, whose output the
// tests of internal/bootstrap prove valid), so that cmd/meshca-agent, a
// binary of the agent alone, stays small: the pages of code a process maps
// count towards its resident memory. meshca's own command line adds the
// same commands (internal/cli), so both binaries run one implementation;
// it also checks each envoy.yaml with Envoy's protos before writing it
// (BootstrapConfig.CheckEnvoy). Tests of this package fail when one of
// those dependencies creeps back.
package nodecmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/text"
)

// NodeFile is the name of the file bootstrap writes for renew and the
// agent.
const NodeFile = "meshca-node.json"

// ExecuteAgent runs the node agent as a program of its own (name, e.g.
// meshca-agent), with args as meshca agent takes them, and prints any
// error to stderr. It returns the error so that main can set the exit
// code.
func ExecuteAgent(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	cmd := Agent(AgentConfig{SetMemoryLimit: debug.SetMemoryLimit})
	cmd.Use = name + " " + agentUsage
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	// Stderr escapes control characters: an error can quote what meshca
	// or a peer sent.
	esc := text.NewWriter(stderr)
	cmd.SetErr(esc)
	err := cmd.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(esc, name+": "+err.Error())
	}
	esc.Flush()
	return err
}

// ExactArgs is cobra.ExactArgs with a message that names what is missing;
// meshca's other commands (internal/cli) use it too.
func ExactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		if n == 0 {
			return fmt.Errorf("%s takes no arguments (see %s --help)", cmd.CommandPath(), cmd.CommandPath())
		}
		return fmt.Errorf("%s needs %s (usage: %s)", cmd.CommandPath(), names, cmd.UseLine())
	}
}

// ReadAllLimited reads at most 8 MiB, far more than a join token or a mesh
// file; meshca's other commands (internal/cli) use it too.
func ReadAllLimited(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, 8<<20+1))
	if err != nil {
		return nil, err
	}
	if len(data) > 8<<20 {
		return nil, errors.New("input larger than 8 MiB: give a smaller file (a join token or a mesh file is a few KiB)")
	}
	return data, nil
}
