package cli

import (
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/meshca/meshca/internal/api"
)

func meshCmd(g *globals) *cobra.Command {
	cmd := group("mesh", "Apply, show and roll back the declarative mesh (services, routes, front proxy, sidecars)")
	cmd.AddCommand(meshApplyCmd(g), meshShowCmd(g), meshHistoryCmd(g))
	return cmd
}

func meshApplyCmd(g *globals) *cobra.Command {
	var (
		file    string
		version uint64
		dryRun  bool
		push    pushFlags
	)
	cmd := &cobra.Command{
		Use:   "apply (-f FILE | --version N) [--dry-run]",
		Short: "Validate a mesh file and push it to every node (or re-apply an older version to roll back)",
		Long: "The whole file is validated and every node's configuration built before anything is\n" +
			"stored; every problem is listed with its path and nothing changes on error. --dry-run\n" +
			"shows what would change for each node. --version N applies stored version N again.",
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (file == "") == (version == 0) {
				return fmt.Errorf("pass -f FILE or --version N")
			}
			var (
				plan   api.MeshPlan
				asJSON bool
				err    error
			)
			q := ""
			if !dryRun {
				if q, err = push.query(); err != nil {
					return err
				}
			}
			if file != "" {
				var doc []byte
				if file == "-" {
					doc, err = readAllLimited(cmd.InOrStdin())
				} else {
					doc, err = os.ReadFile(file)
				}
				if err != nil {
					return fmt.Errorf("read mesh file: %w", err)
				}
				asJSON, err = g.call(cmd, "POST", api.PathMesh+q, api.ApplyMeshRequest{Document: string(doc), DryRun: dryRun}, &plan)
			} else {
				asJSON, err = g.call(cmd, "POST", api.PathMeshRoll+q, api.RollbackMeshRequest{Version: version, DryRun: dryRun}, &plan)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), plan)
			}
			w := cmd.OutOrStdout()
			switch {
			case plan.DryRun:
				fmt.Fprintln(w, "dry run: nothing was stored or pushed")
			case plan.Unchanged:
				fmt.Fprintf(w, "unchanged: this is mesh version %d, the one in use; nothing was stored or pushed\n", plan.Version)
				return nil
			default:
				fmt.Fprintf(w, "applied mesh version %d\n", plan.Version)
				printPushed(w, fmt.Sprintf("mesh version %d", plan.Version), plan.Pushed, push.timeout)
			}
			if len(plan.Changes) == 0 {
				fmt.Fprintln(w, "no node's configuration changes")
				return nil
			}
			nodes := make([]string, 0, len(plan.Changes))
			for n := range plan.Changes {
				nodes = append(nodes, n)
			}
			sort.Strings(nodes)
			for _, n := range nodes {
				fmt.Fprintf(w, "node %s:\n", esc(n))
				for _, c := range plan.Changes[n] {
					fmt.Fprintf(w, "  %-6s %s %s\n", c.Op, shortType(c.Type), esc(c.Name))
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "mesh file (YAML); - reads standard input")
	cmd.Flags().Uint64Var(&version, "version", 0, "re-apply this stored version (roll back)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would change per node, change nothing")
	push.register(cmd)
	return cmd
}

func meshShowCmd(g *globals) *cobra.Command {
	var version uint64
	cmd := &cobra.Command{
		Use:   "show [--version N] [-o yaml|json]",
		Short: "Print the mesh in use (or a stored version)",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format := g.output
			if format != "text" && format != "yaml" && format != "json" {
				return fmt.Errorf("-o %q: use yaml or json", format)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var m api.MeshVersion
			path := api.PathMesh
			if version > 0 {
				path += fmt.Sprintf("?version=%d", version)
			}
			if err := c.do(cmd.Context(), "GET", path, nil, &m); err != nil {
				return err
			}
			if format != "json" {
				fmt.Fprintf(cmd.OutOrStdout(), "# mesh version %d, applied %s by %s\n%s", m.Version, m.AppliedAt.UTC().Format(time.RFC3339), m.AppliedBy, m.Document)
				return nil
			}
			var doc any
			if err := yaml.Unmarshal([]byte(m.Document), &doc); err != nil {
				return fmt.Errorf("stored mesh is not YAML: %w", err)
			}
			return writeJSON(cmd.OutOrStdout(), map[string]any{"version": m.Version, "applied_at": m.AppliedAt, "applied_by": m.AppliedBy, "mesh": doc})
		},
	}
	cmd.Flags().Uint64Var(&version, "version", 0, "stored version to show (default: the one in use)")
	return cmd
}

func meshHistoryCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "history",
		Short: "List the stored mesh versions",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var hist []api.MeshVersion
			asJSON, err := g.call(cmd, "GET", api.PathMeshHist, nil, &hist)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), hist)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tAPPLIED\tBY")
			for _, m := range hist {
				fmt.Fprintf(tw, "%d\t%s\t%s\n", m.Version, m.AppliedAt.UTC().Format(time.RFC3339), esc(m.AppliedBy))
			}
			return tw.Flush()
		},
	}
}

func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}
