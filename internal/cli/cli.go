// Package cli is meshca's command line. Every command except `server` and
// `store` (which run in-process, on a data directory) is a
// client of the admin API (never of the store), so the same commands work
// against a local or a remote server.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/nodecmd"
	"github.com/meshca/meshca/internal/text"
)

// ServerFunc runs the server until ctx is done.
type ServerFunc func(ctx context.Context, cfg config.Config, log *slog.Logger) error

// MigrateFunc copies cfg.DataDir into the etcd of cfg.Store.Etcd and checks
// the copy, printing progress and a summary to out.
type MigrateFunc func(ctx context.Context, cfg config.Config, out io.Writer) error

// Config wires the CLI.
type Config struct {
	Server  ServerFunc  // runs `meshca server`
	Migrate MigrateFunc // runs `meshca store migrate`
	Stdout  io.Writer   // default os.Stdout
	Stderr  io.Writer   // default os.Stderr
	// Getenv reads MESHCA_* variables; default os.Getenv.
	Getenv func(string) string
	// AgentMemoryLimit sets the soft memory limit of `meshca agent`
	// (nodecmd.AgentConfig.SetMemoryLimit): debug.SetMemoryLimit in main,
	// where the agent is the whole process; nil leaves the runtime's.
	AgentMemoryLimit func(int64) int64
}

// Environment variables.
const (
	EnvAdmin   = "MESHCA_ADMIN"
	EnvTLSCert = "MESHCA_TLS_CERT"
	EnvTLSKey  = "MESHCA_TLS_KEY"
	EnvTLSCA   = "MESHCA_TLS_CA"
)

// NodeFile is the node file meshca bootstrap and meshca agent write in a
// node's directory.
const NodeFile = nodecmd.NodeFile

// DefaultAdmin is where the CLI looks for the admin API.
const DefaultAdmin = "127.0.0.1:8000"

// Execute runs the command line args and prints any error to Stderr. It
// returns the error so that main can set the exit code.
func Execute(ctx context.Context, cfg Config, args []string) error {
	cmd := New(cfg)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err != nil {
		// Stderr escapes control characters: an error can quote what the
		// server or a peer sent.
		fmt.Fprintln(cmd.ErrOrStderr(), "meshca: "+err.Error())
	}
	for _, w := range []io.Writer{cmd.OutOrStdout(), cmd.ErrOrStderr()} {
		if f, ok := w.(interface{ Flush() error }); ok {
			f.Flush()
		}
	}
	return err
}

// New builds the root command.
func New(cfg Config) *cobra.Command {
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	g := &globals{cfg: cfg}
	root := &cobra.Command{
		Use:           "meshca",
		Short:         "Internal certificate authority and Envoy control plane",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(&output{g: g, raw: cfg.Stdout, esc: text.NewWriter(cfg.Stdout)})
	root.SetErr(text.NewWriter(cfg.Stderr))
	pf := root.PersistentFlags()
	pf.StringVar(&g.admin, "admin", "", "admin API address host:port (default $"+EnvAdmin+" or "+DefaultAdmin+")")
	pf.StringVarP(&g.output, "output", "o", "text", "output format of list and show commands: text or json (mesh show: yaml or json)")
	pf.StringVar(&g.tlsCert, "tls-cert", "", "client certificate for a non-loopback admin API (default $"+EnvTLSCert+")")
	pf.StringVar(&g.tlsKey, "tls-key", "", "client key for a non-loopback admin API (default $"+EnvTLSKey+")")
	pf.StringVar(&g.tlsCA, "tls-ca", "", "trust bundle that verifies a non-loopback admin API (default $"+EnvTLSCA+")")
	root.AddCommand(
		serverCmd(cfg),
		storeCmd(cfg),
		identityCmd(g),
		certCmd(g),
		caCmd(g),
		auditCmd(g),
		nodeCmd(g),
		meshCmd(g),
		statusCmd(g),
		logsCmd(g),
		// The full binary links Envoy's config protos for the mesh
		// anyway, so it checks each envoy.yaml with them again before
		// writing it; meshca-agent renders it unchecked.
		nodecmd.Bootstrap(nodecmd.BootstrapConfig{CheckEnvoy: envoycheck.Envoy}),
		nodecmd.Agent(nodecmd.AgentConfig{SetMemoryLimit: cfg.AgentMemoryLimit, CheckEnvoy: envoycheck.Envoy}),
		versionCmd(),
	)
	addCompletions(root, g)
	return root
}

// globals are the flags every client command shares.
type globals struct {
	cfg                    Config
	admin, output          string
	tlsCert, tlsKey, tlsCA string
}

func (g *globals) json() (bool, error) {
	switch g.output {
	case "text":
		return false, nil
	case "json":
		return true, nil
	}
	return false, fmt.Errorf("-o %q: use text or json", g.output)
}

func (g *globals) client() (*client, error) {
	addr := firstNonEmpty(g.admin, g.cfg.Getenv(EnvAdmin), DefaultAdmin)
	return newClient(clientConfig{
		Addr:    addr,
		TLSCert: firstNonEmpty(g.tlsCert, g.cfg.Getenv(EnvTLSCert)),
		TLSKey:  firstNonEmpty(g.tlsKey, g.cfg.Getenv(EnvTLSKey)),
		TLSCA:   firstNonEmpty(g.tlsCA, g.cfg.Getenv(EnvTLSCA)),
	})
}

// call sends one request to the admin API, decoding the answer into out,
// and says whether the user asked for -o json.
func (g *globals) call(cmd *cobra.Command, method, path string, body, out any) (asJSON bool, err error) {
	if asJSON, err = g.json(); err != nil {
		return false, err
	}
	c, err := g.client()
	if err != nil {
		return false, err
	}
	return asJSON, c.do(cmd.Context(), method, path, body, out)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

var errUsage = errors.New("usage")
