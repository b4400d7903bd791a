package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/mesh"
)

func nodeCmd(g *globals) *cobra.Command {
	cmd := group("node", "Register proxies (nodes), hand out join tokens, assign identities")
	cmd.AddCommand(nodeAddCmd(g), nodeListCmd(g), nodeShowCmd(g), nodeTokenCmd(g), nodeAssignCmd(g, true), nodeAssignCmd(g, false), revokeCmd(g, true))
	return cmd
}

func nodeAddCmd(g *globals) *cobra.Command {
	var (
		ids             []string
		kind, tokenFile string
		agent           bool
		selectors       []string
	)
	cmd := &cobra.Command{
		Use:   "add NODE --identity NAME... [--kind sidecar|front-proxy|grpc] [--agent [--selector uid:N|gid:N|path:/abs/path]...]",
		Short: "Register a node, assign it identities, and print its one-time join token",
		Args:  exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var tok api.JoinToken
			asJSON, err := g.call(cmd, "POST", api.PathNodes, api.AddNodeRequest{Name: args[0], Kind: kind, Identities: ids, Agent: agent, Selectors: selectors}, &tok)
			if err != nil {
				return err
			}
			if tokenFile != "" {
				if err := atomicfile.Write(tokenFile, []byte(tok.Token+"\n"), 0o600); err != nil {
					return fmt.Errorf("write --token-file: %w", err)
				}
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), tok)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added node %s (%s) with identities: %s\n", tok.Node.Name, tok.Node.Kind, list(tok.Node.Identities))
			if tokenFile != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "join token written to %s (single use, expires %s); on the node, run:\n  ", tokenFile, tok.Expires.UTC().Format(time.RFC3339))
				if tok.Node.Agent {
					fmt.Fprintf(cmd.OutOrStdout(), agentCommand+"\n", tok.XDSAddress, tok.Node.Name, tokenFile, tok.CASHA256)
					return nil
				}
				fmt.Fprintf(cmd.OutOrStdout(), "meshca bootstrap --server %s --node %s --token-file %s --ca-sha256 %s --out /etc/meshca/node\n",
					tok.XDSAddress, tok.Node.Name, tokenFile, tok.CASHA256)
				return nil
			}
			writeToken(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "write the join token to this file (0600) instead of printing it")
	cmd.Flags().StringSliceVar(&ids, "identity", nil, "identity whose secret the node receives (repeat for more)")
	cmd.Flags().BoolVar(&agent, "agent", false, "an agent node: its agent makes the identities' keys and sends CSRs; meshca never sends it a private key")
	cmd.Flags().StringArrayVar(&selectors, "selector", nil, "with --agent: serve every --identity only to local processes matching every selector: uid:N, gid:N, path:/abs/path (repeat for more; change later with node assign)")
	cmd.Flags().StringVar(&kind, "kind", mesh.KindSidecar, fmt.Sprintf("node kind: %s, %s or %s", mesh.KindSidecar, mesh.KindFrontProxy, mesh.KindGRPC))
	return cmd
}

func nodeTokenCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "token NODE",
		Short: "Replace a node's join token with a new one (to bootstrap it again; its earlier node certificates are revoked when it joins)",
		Args:  exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var tok api.JoinToken
			asJSON, err := g.call(cmd, "POST", api.PathNodes+"/"+escapeName(args[0])+"/token", struct{}{}, &tok)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), tok)
			}
			writeToken(cmd.OutOrStdout(), tok)
			return nil
		},
	}
}

// agentCommand is the command that starts an agent node's agent, with its
// server, node, token file and pin to fill in. The agent takes the token
// only from a file, so that it stays out of ps.
const agentCommand = "meshca agent --server %s --node %s --token-file %s --ca-sha256 %s --data-dir /var/lib/meshca-agent"

func writeToken(w io.Writer, tok api.JoinToken) {
	fmt.Fprintf(w, "join token (single use, expires %s):\n  %s\n", tok.Expires.UTC().Format(time.RFC3339), tok.Token)
	if tok.Node.Agent {
		fmt.Fprintf(w, "on the node, put the token in a file (0600) and run:\n  "+agentCommand+"\n(--ca-sha256 pins the CA that signs meshca's server certificate; Envoy runs on the envoy.yaml the agent writes there)\n",
			tok.XDSAddress, tok.Node.Name, "FILE", tok.CASHA256)
		return
	}
	fmt.Fprintf(w, "on the node, run:\n  meshca bootstrap --server %s --node %s --token %s --ca-sha256 %s --out /etc/meshca/node\n(or put the token in a file and pass --token-file FILE, so it stays out of ps;\n --ca-sha256 pins the CA that signs meshca's server certificate)\n",
		tok.XDSAddress, tok.Node.Name, tok.Token, tok.CASHA256)
}

func nodeListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List nodes: kind, identities, whether connected, what each has acknowledged",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ns []api.Node
			asJSON, err := g.call(cmd, "GET", api.PathNodes, nil, &ns)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), ns)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tJOINED\tCONNECTED\tIDENTITIES\tACKED")
			for _, n := range ns {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", esc(n.Name), kindOf(n), esc(n.State), yesNo(n.Joined),
					connected(n.Connection), list(n.Identities), acked(n.Connection.Acked))
			}
			return tw.Flush()
		},
	}
}

func nodeShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NODE",
		Short: "Show a node, its identities and its connection",
		Args:  exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n api.Node
			asJSON, err := g.call(cmd, "GET", api.PathNodes+"/"+escapeName(args[0]), nil, &n)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), n)
			}
			writeNode(cmd.OutOrStdout(), n)
			return nil
		},
	}
}

func nodeAssignCmd(g *globals, assign bool) *cobra.Command {
	var (
		ident     string
		selectors []string
	)
	use, short := "assign NODE --identity NAME [--selector uid:N|gid:N|path:/abs/path]...", "Give a node an identity; its proxies receive the secret at once"
	if !assign {
		use, short = "unassign NODE --identity NAME", "Take an identity from a node; its secret is withdrawn at once"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ident == "" {
				return fmt.Errorf("--identity NAME is required")
			}
			var n api.Node
			path := api.PathNodes + "/" + escapeName(args[0]) + "/identities"
			var err error
			var asJSON bool
			if assign {
				asJSON, err = g.call(cmd, "POST", path, api.AssignRequest{Identity: ident, Selectors: selectors}, &n)
			} else {
				asJSON, err = g.call(cmd, "DELETE", path+"/"+escapeName(ident), nil, &n)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), n)
			}
			writeNode(cmd.OutOrStdout(), n)
			return nil
		},
	}
	cmd.Flags().StringVar(&ident, "identity", "", "identity name")
	if assign {
		cmd.Flags().StringArrayVar(&selectors, "selector", nil, "agent nodes: serve the identity only to local processes matching every selector: uid:N, gid:N, path:/abs/path (repeat for more; "+
			"assigning again replaces them; without any, every local process may have it)")
	}
	return cmd
}

func writeNode(w io.Writer, n api.Node) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", esc(n.Name))
	fmt.Fprintf(tw, "kind:\t%s\n", kindOf(n))
	fmt.Fprintf(tw, "state:\t%s\n", esc(n.State))
	fmt.Fprintf(tw, "joined:\t%s\n", yesNo(n.Joined))
	fmt.Fprintf(tw, "identities:\t%s\n", list(n.Identities))
	if n.Agent {
		for _, id := range n.Identities {
			sel := "any local process"
			if s := n.Selectors[id]; len(s) > 0 {
				sel = list(s)
			}
			fmt.Fprintf(tw, "%s selectors:\t%s\n", esc(id), sel)
		}
	}
	fmt.Fprintf(tw, "connected:\t%s\n", connected(n.Connection))
	if len(n.Connection.Acked) > 0 {
		fmt.Fprintf(tw, "acked:\t%s\n", acked(n.Connection.Acked))
	}
	if n.Connection.NACKs > 0 {
		fmt.Fprintf(tw, "nacks:\t%d (last: %s)\n", n.Connection.NACKs, esc(n.Connection.LastNACK))
	}
	tw.Flush()
}

// kindOf is a node's kind, marked when it is an agent node.
func kindOf(n api.Node) string {
	if n.Agent {
		return esc(n.Kind) + " (agent)"
	}
	return esc(n.Kind)
}

func connected(c api.NodeConnection) string {
	if c.Connected {
		return fmt.Sprintf("yes (%d streams)", c.Streams)
	}
	return "no"
}

// acked renders "Secret=v1a2 Listener=..." with short type names.
func acked(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(m))
	for typeURL, v := range m {
		t := typeURL[strings.LastIndex(typeURL, ".")+1:]
		parts = append(parts, esc(t+"="+v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return esc(strings.Join(s, ","))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
