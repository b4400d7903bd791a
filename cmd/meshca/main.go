// Command meshca is an internal certificate authority and Envoy control
// plane. See the README for the quickstart.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Execute(ctx, cli.Config{Server: app.Run, Migrate: app.Migrate, AgentMemoryLimit: debug.SetMemoryLimit}, os.Args[1:])
	stop()
	if err != nil {
		os.Exit(1)
	}
}
