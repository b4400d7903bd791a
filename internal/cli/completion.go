package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

// completionTimeout bounds the admin API call a shell completion makes.
const completionTimeout = 3 * time.Second

// addCompletions makes the shell completion (meshca completion bash|zsh|
// fish|powershell) offer the identity and node names the admin API knows,
// for the commands and flags that take them.
func addCompletions(root *cobra.Command, g *globals) {
	identities := completeNames(g, func(ctx context.Context, c *client) ([]string, error) {
		var ids []api.Identity
		err := c.do(ctx, "GET", api.PathIdentities, nil, &ids)
		names := make([]string, 0, len(ids))
		for _, id := range ids {
			names = append(names, id.Name)
		}
		return names, err
	})
	nodes := completeNames(g, func(ctx context.Context, c *client) ([]string, error) {
		var ns []api.Node
		err := c.do(ctx, "GET", api.PathNodes, nil, &ns)
		names := make([]string, 0, len(ns))
		for _, n := range ns {
			names = append(names, n.Name)
		}
		return names, err
	})
	first := func(f cobra.CompletionFunc) cobra.CompletionFunc {
		return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return f(cmd, args, toComplete)
		}
	}
	for path, f := range map[string]cobra.CompletionFunc{
		"identity show": identities, "identity reissue": identities, "identity revoke": identities,
		"cert show": identities, "cert issue": identities,
		"node show": nodes, "node token": nodes, "node revoke": nodes, "node assign": nodes, "node unassign": nodes,
	} {
		if cmd, _, err := root.Find(strings.Fields(path)); err == nil && cmd.ValidArgsFunction == nil {
			cmd.ValidArgsFunction = first(f)
		}
	}
	for _, path := range []string{"node add", "node assign", "node unassign"} {
		if cmd, _, err := root.Find(strings.Fields(path)); err == nil && cmd.Flags().Lookup("identity") != nil {
			_ = cmd.RegisterFlagCompletionFunc("identity", identities)
		}
	}
}

// completeNames turns a listing of names into a completion function. A
// server that cannot be reached completes nothing, silently.
func completeNames(g *globals, list func(context.Context, *client) ([]string, error)) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		c, err := g.client()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
		defer cancel()
		names, err := list(ctx, c)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, n := range names {
			if strings.HasPrefix(n, toComplete) {
				out = append(out, n)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
