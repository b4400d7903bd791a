// Command meshca-agent is meshca's node agent alone: `meshca agent` built
// without the server, for nodes. It takes the same flags; see the README's
// "Agent nodes" section.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshca/meshca/internal/nodecmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := nodecmd.ExecuteAgent(ctx, "meshca-agent", os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		os.Exit(1)
	}
}
