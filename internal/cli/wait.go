package cli

import (
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

// pushFlags are --no-wait and --wait-timeout of the writes that wait until
// the connected nodes have the change.
type pushFlags struct {
	noWait  bool
	timeout time.Duration
}

func (p *pushFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&p.noWait, "no-wait", false, "return once the change is committed, without waiting for the connected nodes to have it")
	cmd.Flags().DurationVar(&p.timeout, "wait-timeout", api.DefaultWait, "how long to wait for the connected nodes (at most "+api.MaxWait.String()+")")
}

// query returns the query string that asks the server to wait, or "".
func (p *pushFlags) query() (string, error) {
	if p.noWait {
		return "", nil
	}
	if p.timeout <= 0 || p.timeout > api.MaxWait {
		return "", fmt.Errorf("--wait-timeout %s: give a duration between 1ms and %s, or --no-wait", p.timeout, api.MaxWait)
	}
	q := url.Values{api.QueryWait: {api.WaitPushed}, api.QueryTimeout: {p.timeout.String()}}
	return "?" + q.Encode(), nil
}

// printPushed writes how far the change got, e.g. "revoked web: CRL at 12
// of 12 connected nodes in 9 ms".
func printPushed(w io.Writer, what string, p *api.Pushed, timeout time.Duration) {
	if p == nil {
		return
	}
	fmt.Fprintf(w, "%s at %d of %d connected nodes in %s", what, p.Have, p.Nodes, formatMS(p.TookMS))
	if !p.Complete {
		fmt.Fprintf(w, "; %d not yet after %s (they get it when they acknowledge; meshca node show NAME tells)", p.Missing, timeout)
	}
	fmt.Fprintln(w)
}

func formatMS(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.1f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}
