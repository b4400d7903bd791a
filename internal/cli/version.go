package cli

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print meshca's version, the commit it was built from and the Go version",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			bi, ok := debug.ReadBuildInfo()
			if !ok {
				bi = nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), versionLine(bi))
			return nil
		},
	}
}

// versionLine describes a build from its build info: module version,
// commit (with its time, and "modified" when the tree had uncommitted
// changes) and Go version. Go stamps the commit when it builds inside a
// git checkout (-buildvcs, on by default).
func versionLine(bi *debug.BuildInfo) string {
	if bi == nil {
		return "meshca (no build information)"
	}
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	vcs := map[string]string{}
	for _, s := range bi.Settings {
		if strings.HasPrefix(s.Key, "vcs.") {
			vcs[s.Key] = s.Value
		}
	}
	commit := "commit unknown (built without VCS information, e.g. -buildvcs=false or outside a git checkout)"
	if rev := vcs["vcs.revision"]; rev != "" {
		var notes []string
		if t := vcs["vcs.time"]; t != "" {
			notes = append(notes, t)
		}
		if vcs["vcs.modified"] == "true" {
			notes = append(notes, "modified")
		}
		commit = "commit " + rev
		if len(notes) > 0 {
			commit += " (" + strings.Join(notes, ", ") + ")"
		}
	}
	return fmt.Sprintf("meshca %s, %s, %s", version, commit, bi.GoVersion)
}
