package nodecmd

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/nodeapi"
)

type bootstrapOptions struct {
	server, token, node, out string
	tokenFile                string
	caSHA256, caFile         string
	adminPort                uint32
	agentSDS                 string // the node agent's SDS socket, for envoy.yaml
	checkEnvoy               envoyCheck
}

// envoyCheck checks a rendered envoy.yaml before it is written; nil checks
// nothing (see BootstrapConfig.CheckEnvoy).
type envoyCheck func(envoyYAML []byte) error

// BootstrapConfig configures the bootstrap command.
type BootstrapConfig struct {
	// CheckEnvoy, when not nil, checks every envoy.yaml the command
	// renders before anything is written: meshca's full command line sets
	// envoycheck.Envoy (Envoy's own protos, validated deep). The node
	// agent's binary leaves it nil, since that check links nearly all of
	// Envoy's config protos and a YAML library; internal/bootstrap's tests
	// prove that every accepted set of parameters renders a valid file.
	CheckEnvoy func(envoyYAML []byte) error
}

// Bootstrap is the meshca bootstrap command, with bootstrap renew.
func Bootstrap(cfg BootstrapConfig) *cobra.Command {
	o := bootstrapOptions{checkEnvoy: cfg.CheckEnvoy}
	cmd := &cobra.Command{
		Use:   "bootstrap --server HOST:PORT --node NODE --token TOKEN --ca-sha256 HEX --out DIR",
		Short: "Exchange a node's join token for its certificate and write the proxy's bootstrap",
		Long: "Generates the node key here and sends only a CSR. Writes into DIR the node certificate\n" +
			"and key (0600), the trust bundle, file-based SDS files for both, meshca's issuing CAs\n" +
			"(" + bootstrap.IssuersFile + ", pinned by later renewals), and envoy.yaml (sidecar,\n" +
			"front-proxy) or grpc-bootstrap.json (grpc). The token is sent only to a server whose\n" +
			"certificate is signed by the CA pinned with --ca-sha256 (printed by meshca node add and\n" +
			"meshca node token) or by a CA in --ca-file (PEM of meshca's issuing CA: meshca ca pin, or\n" +
			"the " + bootstrap.IssuersFile + " of a node that already joined). An organisation root\n" +
			"shared with other CAs is not enough.",
		Args: ExactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.tokenFile != "" {
				if o.token != "" {
					return errors.New("pass --token or --token-file, not both")
				}
				var err error
				if o.token, err = readTokenFile(o.tokenFile, cmd.InOrStdin()); err != nil {
					return err
				}
			}
			return runBootstrap(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "", "meshca's xDS address, host:port")
	f.StringVar(&o.node, "node", "", "node name given to meshca node add")
	f.StringVar(&o.token, "token", "", "one-time join token (visible in ps: prefer --token-file)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the join token; - reads standard input")
	f.StringVar(&o.out, "out", "", "directory to write into (created 0700)")
	f.StringVar(&o.caSHA256, "ca-sha256", "", "SHA-256 of the CA that signs meshca's server certificate, as printed by meshca node add")
	f.StringVar(&o.caFile, "ca-file", "", "PEM of meshca's issuing CA(s) (a joined node's "+bootstrap.IssuersFile+"), instead of --ca-sha256")
	f.Uint32Var(&o.adminPort, "envoy-admin-port", 9901, "Envoy admin port on 127.0.0.1 in envoy.yaml")
	f.StringVar(&o.agentSDS, "agent-sds", "", "the node agent's SDS socket (meshca agent --sds-socket): envoy.yaml then takes the node's secrets from it")
	cmd.AddCommand(renewCmd(cfg.CheckEnvoy))
	return cmd
}

// readTokenFile reads a join token from path, or from stdin for "-".
func readTokenFile(path string, stdin io.Reader) (string, error) {
	var (
		data []byte
		err  error
	)
	if path == "-" {
		data, err = ReadAllLimited(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("read --token-file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

func runBootstrap(ctx context.Context, o bootstrapOptions, stdout io.Writer) error {
	var missing []string
	for flag, v := range map[string]string{"--server": o.server, "--node": o.node, "--token": o.token, "--out": o.out} {
		if v == "" {
			missing = append(missing, flag)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if (o.caSHA256 == "") == (o.caFile == "") {
		return errors.New("pass exactly one of --ca-sha256 (printed by meshca node add) and --ca-file, so that the token is only ever sent to meshca")
	}
	if _, _, err := net.SplitHostPort(o.server); err != nil {
		return fmt.Errorf("--server %q is not host:port", o.server)
	}
	dir, err := filepath.Abs(o.out)
	if err != nil {
		return err
	}
	if o.agentSDS != "" {
		if o.agentSDS, err = filepath.Abs(o.agentSDS); err != nil {
			return err
		}
	}
	trust, err := newServerTrust(o.caSHA256, o.caFile)
	if err != nil {
		return err
	}
	trust.node = o.node
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}

	conn, err := grpc.NewClient(o.server, grpc.WithTransportCredentials(credentials.NewTLS(trust.tlsConfig())))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", o.server, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var resp nodeapi.JoinResponse
	req := nodeapi.JoinRequest{Node: o.node, Token: o.token, CSRPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))}
	askReplicas := metadata.AppendToOutgoingContext(ctx, nodeapi.ReplicasHeader, "1")
	if err := conn.Invoke(askReplicas, nodeapi.FullJoinMethod, &req, &resp, grpc.ForceCodec(nodeapi.Codec{})); err != nil {
		if hint := joinHint(o.server, err); hint != nil {
			return hint
		}
		if st, ok := status.FromError(err); ok {
			return fmt.Errorf("meshca at %s refused the join: %s", o.server, st.Message())
		}
		return fmt.Errorf("join at %s: %w", o.server, err)
	}
	if err := trust.checkJoined(resp, o.node, key.Public()); err != nil {
		return fmt.Errorf("the join answer does not check out, nothing written: %w", err)
	}
	if err := checkServerName(ctx, o.server, o.node, resp.Kind, resp.IssuersPEM); err != nil {
		return err
	}

	nf := nodeapi.NodeFile{
		Server: o.server, Node: o.node, Kind: resp.Kind, TrustDomain: resp.TrustDomain,
		Servers: serverList(o.server, resp.Replicas), EnvoyAdminPort: o.adminPort, AgentSDS: o.agentSDS,
	}
	p := nodeParams(nf, dir)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data func() ([]byte, error)
	}{
		{bootstrap.KeyFile, func() ([]byte, error) { return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil }},
		{bootstrap.CertFile, func() ([]byte, error) { return []byte(resp.ChainPEM), nil }},
		{bootstrap.BundleFile, func() ([]byte, error) { return []byte(resp.BundlePEM), nil }},
		{bootstrap.IssuersFile, func() ([]byte, error) { return []byte(resp.IssuersPEM), nil }},
		{bootstrap.CertSDSFile, func() ([]byte, error) { return bootstrap.CertSDS(p) }},
		{bootstrap.BundleSDSFile, func() ([]byte, error) { return bootstrap.BundleSDS(p) }},
		{NodeFile, func() ([]byte, error) { return json.MarshalIndent(nf, "", "  ") }},
		{proxyBootstrapFile(nf.Kind), func() ([]byte, error) { return proxyBootstrap(nf, dir, o.checkEnvoy) }},
	}
	// Render everything before writing anything.
	rendered := make([][]byte, len(files))
	for i, f := range files {
		if rendered[i], err = f.data(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i, f := range files {
		if err := atomicfile.Write(filepath.Join(dir, f.name), rendered[i], 0o600); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	fmt.Fprintf(stdout, "node %s joined %s (%s): certificate serial %s, not after %s\n",
		o.node, resp.TrustDomain, resp.Kind, resp.Serial, resp.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(stdout, "  meshca replicas: %s\n", strings.Join(nf.Servers, ", "))
	for _, f := range files {
		fmt.Fprintf(stdout, "  wrote %s\n", filepath.Join(dir, f.name))
	}
	return nil
}

// serverList is the servers a node uses: the one it was given first, then
// every replica meshca named that is a usable host:port, each once, at most
// bootstrap.MaxReplicas more.
func serverList(server string, replicas []string) []string {
	out := []string{server}
	for _, r := range replicas {
		if len(out) > bootstrap.MaxReplicas {
			break
		}
		if bootstrap.CheckServer(r) != nil || slices.Contains(out, r) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// nodeParams are the bootstrap parameters of the node described by nf.
func nodeParams(nf nodeapi.NodeFile, dir string) bootstrap.Params {
	p := bootstrap.Params{Node: nf.Node, Cluster: nf.Node, TrustDomain: nf.TrustDomain, Server: nf.Server, Dir: dir, AdminPort: nf.EnvoyAdminPort, AgentSDS: nf.AgentSDS}
	if len(nf.Servers) > 1 {
		p.Replicas = nf.Servers[1:]
	}
	return p
}

// proxyBootstrapFile is the bootstrap file a node of kind reads.
func proxyBootstrapFile(kind string) string {
	if kind == nodeapi.KindGRPC {
		return bootstrap.GRPCFile
	}
	return bootstrap.EnvoyFile
}

// proxyBootstrap renders the node's bootstrap (envoy.yaml, passed through
// check, or grpc-bootstrap.json), listing every server in nf; for a gRPC
// agent node the grpc bootstrap also declares a certificate provider for
// each identity whose files are in nf.AgentFiles.
func proxyBootstrap(nf nodeapi.NodeFile, dir string, check envoyCheck) ([]byte, error) {
	p := nodeParams(nf, dir)
	if nf.Kind == nodeapi.KindGRPC {
		if nf.AgentFiles != "" {
			// The identities the agent writes files for now.
			ids, err := agentfiles.List(nf.AgentFiles)
			if err != nil {
				return nil, err
			}
			p.AgentFiles, p.Identities = nf.AgentFiles, ids
		}
		return bootstrap.GRPC(p)
	}
	y, err := bootstrap.Envoy(p)
	if err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(y); err != nil {
			return nil, fmt.Errorf("generated envoy.yaml does not validate: %w", err)
		}
	}
	return y, nil
}

// serverTrust decides whether the server is meshca before the token is
// sent: its certificate must be signed directly by a CA only meshca holds,
// pinned by hash (--ca-sha256) or given as PEM (--ca-file, or the node's
// issuers file when it renews). Another CA under the same organisation root
// cannot pass.
type serverTrust struct {
	pin     []byte              // SHA-256 of the CA that signs meshca's server certificate
	issuers []*x509.Certificate // from --ca-file, IssuersFile, or the node certificate's chain
	node    string              // for hints
	renewal bool                // meshca is pinned by what an earlier answer named
}

func newServerTrust(pinHex, caFile string) (*serverTrust, error) {
	if pinHex != "" {
		pin, err := hex.DecodeString(strings.ReplaceAll(strings.ToLower(pinHex), ":", ""))
		if err != nil || len(pin) != sha256.Size {
			return nil, fmt.Errorf("--ca-sha256 must be 64 hex digits, as printed by meshca node add")
		}
		return &serverTrust{pin: pin}, nil
	}
	certs, err := readCAFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	return &serverTrust{issuers: certs}, nil
}

func readCAFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return out, nil
}

// renewTrust is how a node directory pins meshca when it renews: by the
// issuing CAs it was given or, in a directory that predates them, by the
// CAs in its node certificate's chain, which meshca's issuing CA signed.
// Never by the trust bundle: its roots may be an organisation's, shared
// with other CAs, and an impostor's answer would replace whom the node
// trusts as meshca.
func renewTrust(dir string) (*serverTrust, error) {
	issuers, err := readCAFile(filepath.Join(dir, bootstrap.IssuersFile))
	if err == nil {
		return &serverTrust{issuers: issuers, renewal: true}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	chain, err := readCAFile(filepath.Join(dir, bootstrap.CertFile))
	if err != nil {
		return nil, err
	}
	if len(chain) < 2 {
		return nil, fmt.Errorf("%s has no %s and %s names no issuing CA to pin meshca by: bootstrap the node again with a token from meshca node token NODE",
			dir, bootstrap.IssuersFile, bootstrap.CertFile)
	}
	return &serverTrust{issuers: chain[1:], renewal: true}, nil
}

// pinned reports whether c is a CA this trust names.
func (t *serverTrust) pinned(c *x509.Certificate) bool {
	if sum := sha256.Sum256(c.Raw); t.pin != nil && bytes.Equal(sum[:], t.pin) {
		return true
	}
	for _, is := range t.issuers {
		if is.Equal(c) {
			return true
		}
	}
	return false
}

// verifyServer checks meshca's presented chain.
func (t *serverTrust) verifyServer(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("server presented no certificate")
	}
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	// The pinned CA is the anchor, and no intermediate is offered: the
	// server certificate must be signed by it directly.
	for _, is := range t.issuers {
		opts.Roots.AddCert(is)
	}
	for _, c := range certs[1:] {
		if t.pin != nil && t.pinned(c) {
			opts.Roots.AddCert(c)
		}
	}
	if _, err := certs[0].Verify(opts); err != nil {
		if t.renewal {
			return fmt.Errorf("the server's certificate is not signed by a meshca CA this node knows (%s): either this is not meshca, or meshca's CA was rotated while this node could not renew; bootstrap it again with a token from meshca node token %s: %w", bootstrap.IssuersFile, t.nodeHint(), err)
		}
		return fmt.Errorf("the server's certificate is not signed by the meshca CA you pinned (--ca-sha256 / --ca-file): either this is not meshca, or meshca's CA was rotated since the command was printed; get a fresh command with meshca node token %s: %w", t.nodeHint(), err)
	}
	if u := certs[0].URIs; len(u) != 1 || u[0].Scheme != "spiffe" || u[0].Path != "/"+identity.ServerName {
		return errors.New("server is not meshca: its certificate lacks spiffe://<trust-domain>/meshca")
	}
	return nil
}

func (t *serverTrust) nodeHint() string {
	if t.node != "" {
		return t.node
	}
	return "NODE"
}

func (t *serverTrust) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The server is identified by the pinned CA and its SPIFFE ID,
		// not by a host name: verification happens below.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs := make([]*x509.Certificate, 0, len(raw))
			for _, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			return t.verifyServer(certs)
		},
	}
}

// checkJoined verifies the answer: the certificate is for this node and
// this key, it chains to the bundle, and the issuing CAs it names hold the
// one pinned (on a join; a renewal learns them from meshca, authenticated).
func (t *serverTrust) checkJoined(resp nodeapi.JoinResponse, node string, pub crypto.PublicKey) error {
	chain, err := parseCerts([]byte(resp.ChainPEM))
	if err != nil || len(chain) == 0 {
		return fmt.Errorf("certificate chain: %v", err)
	}
	bundle, err := parseCerts([]byte(resp.BundlePEM))
	if err != nil || len(bundle) == 0 {
		return fmt.Errorf("trust bundle: %v", err)
	}
	issuers, err := parseCerts([]byte(resp.IssuersPEM))
	if err != nil || len(issuers) == 0 {
		return fmt.Errorf("issuing CAs: %v (is the server an older meshca?)", err)
	}
	if !t.renewal {
		if !slices.ContainsFunc(issuers, t.pinned) {
			return errors.New("the issuing CAs meshca sent do not contain the CA you pinned")
		}
	}
	leaf := chain[0]
	want := "spiffe://" + resp.TrustDomain + "/node/" + node
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		return fmt.Errorf("certificate is not for %s", want)
	}
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pub) {
		return errors.New("certificate is not for the key generated here")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, b := range bundle {
		roots.AddCert(b)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("certificate does not verify against the bundle: %w", err)
	}
	return nil
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
