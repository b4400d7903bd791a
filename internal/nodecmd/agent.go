package nodecmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/nodeapi"
)

type agentOptions struct {
	bootstrapOptions
	dataDir        string
	sdsSocket      string
	workloadSocket string
	writeFiles     string
	identityPoll   time.Duration
}

// agentUsage is the agent command's usage after its name.
const agentUsage = "--server HOST:PORT --node NODE --data-dir DIR [--token-file F (--ca-file F | --ca-sha256 HEX)] [--sds-socket PATH]"

// AgentConfig configures the agent command.
type AgentConfig struct {
	// SetMemoryLimit, when not nil, is given the agent's soft memory
	// limit (memlimit.go) whenever it changes, unless GOMEMLIMIT is set:
	// debug.SetMemoryLimit where the agent is the whole process; nil where
	// it shares the process, as in tests that run it beside meshca. When
	// not nil, the agent also returns freed memory to the system once idle
	// (memrelease.go).
	SetMemoryLimit func(int64) int64
	// CheckEnvoy, when not nil, checks every envoy.yaml the agent renders
	// before it is written, as BootstrapConfig.CheckEnvoy.
	CheckEnvoy func(envoyYAML []byte) error
}

// Agent is the meshca agent command.
func Agent(cfg AgentConfig) *cobra.Command {
	o := agentOptions{bootstrapOptions: bootstrapOptions{checkEnvoy: cfg.CheckEnvoy}}
	cmd := &cobra.Command{
		Use:   "agent " + agentUsage,
		Short: "Run the node agent: keys made on this node, certificates served to the local proxy",
		Long: "Joins meshca once with the one-time token (when DIR holds no node credentials yet;\n" +
			"afterwards they are reused), keeps the node certificate renewed, and for each identity\n" +
			"assigned to the node makes a P-256 key here, has meshca sign only its CSR and renews at\n" +
			"about half of each certificate's life. Keys stay in memory. The certificates and the\n" +
			"trust bundle with its CRL are served to Envoy over SDS on --sds-socket (0600), and\n" +
			"written as files under --write-files; a grpc node always writes them (default DIR/files)\n" +
			"and DIR/grpc-bootstrap.json, whose certificate providers read them, rewritten as its\n" +
			"identities change. meshca pushes every change of the node's identities to the agent at\n" +
			"once; --identity-poll is the fallback while it cannot. If meshca cannot be reached\n" +
			"the agent keeps serving what it has until it expires, warning as expiry nears.\n" +
			"The node must be registered with meshca node add NODE --agent.",
		Args: ExactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.tokenFile != "" {
				var err error
				if o.token, err = readTokenFile(o.tokenFile, cmd.InOrStdin()); err != nil {
					return err
				}
			}
			return runAgent(cmd.Context(), cfg, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "", "meshca's xDS address, host:port")
	f.StringVar(&o.node, "node", "", "node name given to meshca node add --agent")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the join token, for the first start; - reads standard input")
	f.StringVar(&o.caSHA256, "ca-sha256", "", "SHA-256 of the CA that signs meshca's server certificate, as printed by meshca node add (first start)")
	f.StringVar(&o.caFile, "ca-file", "", "PEM of meshca's issuing CA(s), instead of --ca-sha256 (first start)")
	f.StringVar(&o.dataDir, "data-dir", "", "directory for the node credentials and envoy.yaml (created 0700)")
	f.StringVar(&o.sdsSocket, "sds-socket", "", "Unix socket to serve SDS on (default DIR/sds.sock)")
	f.StringVar(&o.workloadSocket, "workload-socket", "", "Unix socket to serve the SPIFFE Workload API on (0666; callers are matched by their peer credentials against the selectors of each assignment)")
	f.StringVar(&o.writeFiles, "write-files", "", "also write <identity>/cert.pem, key.pem (0600) and bundle.pem under this directory; a grpc node always writes them (default DIR/files) and its grpc-bootstrap.json declares them")
	f.Uint32Var(&o.adminPort, "envoy-admin-port", 9901, "Envoy admin port on 127.0.0.1 in envoy.yaml")
	f.DurationVar(&o.identityPoll, "identity-poll", agent.DefaultIdentityPoll, "how often to ask meshca for the node's identities while it does not push them (meshca pushes every change to a connected agent)")
	return cmd
}

func runAgent(ctx context.Context, cfg AgentConfig, o agentOptions, stdout, stderr io.Writer) error {
	if o.dataDir == "" || o.node == "" {
		return errors.New("--node and --data-dir are required")
	}
	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if o.sdsSocket == "" {
		o.sdsSocket = filepath.Join(dir, "sds.sock")
	}
	if o.sdsSocket, err = filepath.Abs(o.sdsSocket); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	nf, err := readNodeFile(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if o.server == "" || o.token == "" {
			return fmt.Errorf("%s holds no node credentials: the first start needs --server and --token-file (from meshca node add %s --agent, or meshca node token %s)", dir, o.node, o.node)
		}
		b := o.bootstrapOptions
		b.out, b.agentSDS = dir, o.sdsSocket
		if err := runBootstrap(ctx, b, stdout); err != nil {
			return err
		}
		if nf, err = readNodeFile(dir); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		if nf.Node != o.node {
			return fmt.Errorf("%s holds the credentials of node %q, not %q: give each node its own --data-dir", dir, nf.Node, o.node)
		}
		if nf.AgentSDS != o.sdsSocket {
			fmt.Fprintf(stdout, "note: %s names SDS socket %q, not %q: Envoy reads the one in its envoy.yaml\n", bootstrap.EnvoyFile, nf.AgentSDS, o.sdsSocket)
		}
		fmt.Fprintf(stdout, "node %s: using the node credentials in %s\n", nf.Node, dir)
	}
	td, err := spiffeid.TrustDomainFromString(nf.TrustDomain)
	if err != nil {
		return fmt.Errorf("%s: trust domain: %w", NodeFile, err)
	}
	if nf.Kind == nodeapi.KindGRPC {
		// A proxyless gRPC node reads its identities' files: write them,
		// and the grpc bootstrap that declares them.
		if o.writeFiles, err = grpcFilesDir(dir, o.writeFiles, &nf); err != nil {
			return err
		}
	}
	// Every replica the node file lists, the first one first: grpc-go's
	// pick_first moves to the next when a connection fails.
	servers := manual.NewBuilderWithScheme("meshca-replicas")
	var addrs []resolver.Address
	for _, s := range serverList(nf.Server, nf.Servers) {
		addrs = append(addrs, resolver.Address{Addr: s})
	}
	servers.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.NewClient(servers.Scheme()+":///meshca", grpc.WithResolvers(servers),
		grpc.WithTransportCredentials(credentials.NewTLS(nodeTLS(dir))),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 15 * time.Second}, MinConnectTimeout: 10 * time.Second}))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", nf.Server, err)
	}
	defer conn.Close()
	if o.workloadSocket != "" {
		if o.workloadSocket, err = filepath.Abs(o.workloadSocket); err != nil {
			return err
		}
	}
	a, err := agent.New(agent.Config{Conn: conn, Node: nf.Node, TrustDomain: td, SDSSocket: o.sdsSocket, WorkloadSocket: o.workloadSocket,
		FilesDir: o.writeFiles, IdentityPoll: o.identityPoll, Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "node agent for %s: SDS on %s; Envoy bootstrap %s\n", nf.Node, o.sdsSocket, filepath.Join(dir, bootstrap.EnvoyFile))
	if o.workloadSocket != "" {
		fmt.Fprintf(stdout, "  SPIFFE Workload API on %s (SPIFFE_ENDPOINT_SOCKET=unix://%s)\n", o.workloadSocket, o.workloadSocket)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	run := func(fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errOnce.Do(func() { first = err })
				cancel()
			}
		}()
	}
	// A gRPC node's grpc-bootstrap.json has one writer, which both the
	// identity changes and a renewal that learns new replicas go through.
	var gb *grpcBootstrap
	if nf.Kind == nodeapi.KindGRPC {
		gb = &grpcBootstrap{dir: dir, log: log}
	}
	renew := func(ctx context.Context, dir string, out io.Writer) (*x509.Certificate, error) {
		return renewNode(ctx, dir, out, gb, cfg.CheckEnvoy)
	}
	run(a.Run)
	if cfg.SetMemoryLimit != nil && os.Getenv("GOMEMLIMIT") == "" {
		run(func(ctx context.Context) error { return followMemoryLimit(ctx, a, cfg.SetMemoryLimit, log) })
	}
	if cfg.SetMemoryLimit != nil {
		run(func(ctx context.Context) error {
			return releaseWhenIdle(ctx, a, clock.Real{}, heapRetained, debug.FreeOSMemory)
		})
	}
	run(func(ctx context.Context) error { return watchRenew(ctx, clock.Real{}, dir, stdout, stderr, renew) })
	if gb != nil {
		fmt.Fprintf(stdout, "  identity files in %s; grpc bootstrap %s (GRPC_XDS_BOOTSTRAP)\n", o.writeFiles, filepath.Join(dir, bootstrap.GRPCFile))
		run(func(ctx context.Context) error { return gb.follow(ctx, a) })
	}
	wg.Wait()
	return first
}

// grpcFilesDir decides where a gRPC agent node's identity files go:
// --write-files, else where the node file says, else DIR/files. It
// records the choice in the node file, from which the grpc bootstrap is
// rendered (here and at a renewal that learns new replicas).
func grpcFilesDir(dir, flag string, nf *nodeapi.NodeFile) (string, error) {
	files := flag
	switch {
	case files != "":
	case nf.AgentFiles != "":
		files = nf.AgentFiles
	default:
		files = filepath.Join(dir, "files")
	}
	files, err := filepath.Abs(files)
	if err != nil {
		return "", err
	}
	if nf.AgentFiles == files {
		return files, nil
	}
	nf.AgentFiles = files
	data, err := json.MarshalIndent(nf, "", "  ")
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(filepath.Join(dir, NodeFile), data, 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", NodeFile, err)
	}
	return files, nil
}

// grpcBootstrap is the one writer of a gRPC agent node's
// grpc-bootstrap.json, which declares a file_watcher certificate provider
// for each identity whose files the agent writes (bootstrap.GRPC) and
// lists meshca's replicas from the node file. Two things change it: the
// node's identities (follow) and a renewal that learns new replicas
// (setServers). Each write reads that whole state again and holds mu from
// the read to the rename, so the last write is always of the latest state:
// a renewal that rendered its file before an identity arrived cannot
// replace the newer one afterwards.
type grpcBootstrap struct {
	dir string
	log *slog.Logger
	mu  sync.Mutex
}

// follow rewrites the bootstrap at start and whenever the agent's state
// changes, until ctx ends. The agent writes an identity's files before it
// announces the change, so every provider names files that exist. grpc-go
// reads its bootstrap when it starts: a gRPC process takes a newly
// assigned identity when restarted.
func (g *grpcBootstrap) follow(ctx context.Context, a *agent.Agent) error {
	var last uint64
	for first := true; ; first = false {
		st, changed := a.State()
		if first || st.Version != last {
			last = st.Version
			if err := g.write(); err != nil {
				g.log.Error("grpc bootstrap not rewritten; the previous one stays", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// setServers records meshca's replicas in the node file and rewrites the
// bootstrap from it.
func (g *grpcBootstrap) setServers(servers []string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	nf, err := readNodeFile(g.dir)
	if err != nil {
		return err
	}
	nf.Servers = servers
	data, err := json.MarshalIndent(nf, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(g.dir, NodeFile), data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", NodeFile, err)
	}
	return g.writeLocked()
}

// write renders the bootstrap from the node file and the identity files
// present, and replaces the file when it differs.
func (g *grpcBootstrap) write() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writeLocked()
}

func (g *grpcBootstrap) writeLocked() error {
	nf, err := readNodeFile(g.dir)
	if err != nil {
		return err
	}
	// A grpc bootstrap: no envoy.yaml to check.
	data, err := proxyBootstrap(nf, g.dir, nil)
	if err != nil {
		return err
	}
	path := filepath.Join(g.dir, bootstrap.GRPCFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", bootstrap.GRPCFile, err)
	}
	ids, _ := agentfiles.List(nf.AgentFiles)
	g.log.Info("grpc bootstrap written; a gRPC process reads it when it starts", "path", path, "identities", strings.Join(ids, ","))
	return nil
}

func readNodeFile(dir string) (nodeapi.NodeFile, error) {
	var nf nodeapi.NodeFile
	raw, err := os.ReadFile(filepath.Join(dir, NodeFile))
	if err != nil {
		return nf, err
	}
	if err := json.Unmarshal(raw, &nf); err != nil || nf.Server == "" || nf.Node == "" {
		return nf, fmt.Errorf("%s is not a meshca node file; move it away and start the agent with a new token", filepath.Join(dir, NodeFile))
	}
	return nf, nil
}

// nodeTLS authenticates to meshca with the node certificate in dir, read
// again at every handshake so that a renewal is used at once, and pins
// meshca by the issuing CAs the node last learnt (as bootstrap renew does).
func nodeTLS(dir string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // meshca is verified below, by its pinned CA and SPIFFE ID
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			pair, err := tls.LoadX509KeyPair(filepath.Join(dir, bootstrap.CertFile), filepath.Join(dir, bootstrap.KeyFile))
			if err != nil {
				return nil, fmt.Errorf("load the node certificate: %w", err)
			}
			return &pair, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, chains [][]*x509.Certificate) error {
			trust, err := renewTrust(dir)
			if err != nil {
				return err
			}
			return trust.tlsConfig().VerifyPeerCertificate(raw, chains)
		},
	}
}
