package nodecmd

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/nodeapi"
	"github.com/meshca/meshca/rotation"
)

func renewCmd(check envoyCheck) *cobra.Command {
	var (
		dir   string
		watch bool
	)
	cmd := &cobra.Command{
		Use:   "renew --dir DIR [--watch]",
		Short: "Renew the node certificate in DIR over mTLS with the current one",
		Long: "Asks meshca for a new node certificate, authenticating with the current one, and\n" +
			"rewrites the certificate and trust bundle atomically so that Envoy's file-based SDS\n" +
			"picks them up. The node key stays. With --watch it keeps running and renews at about\n" +
			"half of each certificate's lifetime, retrying failures with backoff.",
		Args: ExactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--dir DIR is required (the directory meshca bootstrap wrote)")
			}
			renew := func(ctx context.Context, dir string, out io.Writer) (*x509.Certificate, error) {
				return renewNode(ctx, dir, out, nil, check)
			}
			if !watch {
				_, err := renew(cmd.Context(), dir, cmd.OutOrStdout())
				return err
			}
			return watchRenew(cmd.Context(), clock.Real{}, dir, cmd.OutOrStdout(), cmd.ErrOrStderr(), renew)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory written by meshca bootstrap")
	cmd.Flags().BoolVar(&watch, "watch", false, "keep running and renew before each certificate is half-way through its life")
	return cmd
}

type renewFunc func(ctx context.Context, dir string, out io.Writer) (*x509.Certificate, error)

// watchRenew renews at each certificate's renewal point until ctx ends.
func watchRenew(ctx context.Context, clk clock.Clock, dir string, stdout, stderr io.Writer, renew renewFunc) error {
	backoff := rotation.Backoff{Min: 5 * time.Second, Max: 5 * time.Minute}
	attempt := 0
	for {
		leaf, err := readLeaf(filepath.Join(dir, bootstrap.CertFile))
		if err != nil {
			return err
		}
		wait := agent.DefaultPolicy.RenewAt(leaf.NotBefore, leaf.NotAfter, fmt.Sprintf("%x", leaf.SerialNumber)).Sub(clk.Now())
		if attempt > 0 {
			wait = backoff.Next(attempt, clk.Now(), leaf.NotAfter)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-clk.After(wait):
		}
		if _, err := renew(ctx, dir, stdout); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			attempt++
			fmt.Fprintf(stderr, "meshca: renewal failed (attempt %d; certificate expires %s): %v\n", attempt, leaf.NotAfter.UTC().Format(time.RFC3339), err)
			continue
		}
		attempt = 0
	}
}

func readLeaf(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(data)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no certificate: %v", path, err)
	}
	return certs[0], nil
}

// renewNode renews the node certificate in dir and rewrites node.pem and
// bundle.pem. gb is the writer of the node's grpc bootstrap when it has
// one of its own (a gRPC agent node; nil for any other): new replicas go
// through it. check runs on a rewritten envoy.yaml.
func renewNode(ctx context.Context, dir string, out io.Writer, gb *grpcBootstrap, check envoyCheck) (*x509.Certificate, error) {
	raw, err := os.ReadFile(filepath.Join(dir, NodeFile))
	if err != nil {
		return nil, fmt.Errorf("read %s (written by meshca bootstrap): %w", NodeFile, err)
	}
	var nf nodeapi.NodeFile
	if err := json.Unmarshal(raw, &nf); err != nil || nf.Server == "" || nf.Node == "" {
		return nil, fmt.Errorf("%s is not a meshca node file; run meshca bootstrap again", filepath.Join(dir, NodeFile))
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, bootstrap.CertFile), filepath.Join(dir, bootstrap.KeyFile))
	if err != nil {
		return nil, fmt.Errorf("load the node certificate and key in %s: %w", dir, err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("node key cannot sign")
	}
	trust, err := renewTrust(dir)
	if err != nil {
		return nil, err
	}
	trust.node = nf.Node
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	tlsCfg := trust.tlsConfig()
	tlsCfg.Certificates = []tls.Certificate{pair}
	req := nodeapi.RenewRequest{CSRPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))}
	// The node file's server first (an operator may have edited it), then
	// the other replicas it lists. The first that answers renews; one that
	// cannot be reached passes the turn to the next; one that is not the
	// meshca this node pins, or that refuses, ends the renewal.
	servers := serverList(nf.Server, nf.Servers)
	var (
		resp   nodeapi.JoinResponse
		server string
	)
	for i, addr := range servers {
		var untrusted bool
		resp, untrusted, err = renewAt(ctx, addr, tlsCfg, &req)
		if err == nil {
			server = addr
			break
		}
		code := status.Code(err)
		if untrusted || (code != codes.Unavailable && code != codes.DeadlineExceeded) || i == len(servers)-1 || ctx.Err() != nil {
			if st, ok := status.FromError(err); ok {
				return nil, fmt.Errorf("meshca at %s refused the renewal: %s", addr, st.Message())
			}
			return nil, err
		}
		fmt.Fprintf(out, "meshca at %s cannot be reached (%s); trying %s\n", addr, status.Convert(err).Message(), servers[i+1])
	}
	if err := trust.checkJoined(resp, nf.Node, key.Public()); err != nil {
		return nil, fmt.Errorf("the renewal answer does not check out, nothing written: %w", err)
	}
	// The bundle first: it may hold a new root the new chain needs.
	if err := atomicfile.Write(filepath.Join(dir, bootstrap.BundleFile), []byte(resp.BundlePEM), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, bootstrap.IssuersFile), []byte(resp.IssuersPEM), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, bootstrap.CertFile), []byte(resp.ChainPEM), 0o600); err != nil {
		return nil, err
	}
	leaf, err := readLeaf(filepath.Join(dir, bootstrap.CertFile))
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "renewed node %s at %s: serial %s, not after %s\n", nf.Node, server, resp.Serial, resp.NotAfter.UTC().Format(time.RFC3339))
	if err := refreshServers(dir, nf, resp.Replicas, out, gb, check); err != nil {
		fmt.Fprintf(out, "the list of meshca replicas was not updated: %v\n", err)
	}
	if err := useRenewed(ctx, server, trust, dir); err != nil {
		// The files are written: the proxy uses the new certificate on
		// its next connection, which revokes the old one then.
		fmt.Fprintf(out, "the previous certificate stays valid until the new one is first used: %v\n", err)
	}
	return leaf, nil
}

// renewAt asks the meshca at addr to renew, with the replica list.
// untrusted reports that the server failed the pin: it is not one to pass
// over silently.
func renewAt(ctx context.Context, addr string, tlsCfg *tls.Config, req *nodeapi.RenewRequest) (resp nodeapi.JoinResponse, untrusted bool, err error) {
	var failedPin atomic.Bool
	cfg := tlsCfg.Clone()
	verify := cfg.VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		err := verify(raw, chains)
		if err != nil {
			failedPin.Store(true)
		}
		return err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return resp, false, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, nodeapi.ReplicasHeader, "1")
	err = conn.Invoke(ctx, nodeapi.FullRenewMethod, req, &resp, grpc.ForceCodec(nodeapi.Codec{}))
	return resp, failedPin.Load(), err
}

// refreshServers rewrites the node file and the proxy's bootstrap when
// meshca's replicas changed, through gb when the node has one. The server
// the node was bootstrapped with stays first. An answer without a list (an
// older meshca) changes nothing. check runs on a rewritten envoy.yaml.
func refreshServers(dir string, nf nodeapi.NodeFile, replicas []string, out io.Writer, gb *grpcBootstrap, check envoyCheck) error {
	if len(replicas) == 0 {
		return nil
	}
	servers := serverList(nf.Server, replicas)
	if slices.Equal(servers, serverList(nf.Server, nf.Servers)) {
		return nil
	}
	if gb != nil {
		if err := gb.setServers(servers); err != nil {
			return err
		}
		fmt.Fprintf(out, "meshca replicas are now %s: rewrote %s\n", strings.Join(servers, ", "), bootstrap.GRPCFile)
		return nil
	}
	if nf.EnvoyAdminPort == 0 && nf.Kind != nodeapi.KindGRPC {
		nf.EnvoyAdminPort = bootstrap.DefaultAdminPort
		// A directory from before the port was recorded: keep the one in
		// its envoy.yaml.
		if y, err := os.ReadFile(filepath.Join(dir, bootstrap.EnvoyFile)); err == nil {
			if port, ok := bootstrap.AdminPort(y); ok {
				nf.EnvoyAdminPort = port
			}
		}
	}
	nf.Servers = servers
	data, err := proxyBootstrap(nf, dir, check)
	if err != nil {
		return err
	}
	nodeJSON, err := json.MarshalIndent(nf, "", "  ")
	if err != nil {
		return err
	}
	name := proxyBootstrapFile(nf.Kind)
	if err := atomicfile.Write(filepath.Join(dir, name), data, 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, NodeFile), nodeJSON, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "meshca replicas are now %s: rewrote %s", strings.Join(servers, ", "), name)
	if nf.Kind != nodeapi.KindGRPC {
		fmt.Fprint(out, " (Envoy reads it when it starts)")
	}
	fmt.Fprintln(out)
	return nil
}

// useRenewed makes one connection to meshca with the renewed certificate:
// its first use revokes the node's previous certificates (and ends the
// connections made with them), so that a stolen copy of the old one stops
// working now rather than at the proxy's next reconnect.
func useRenewed(ctx context.Context, server string, trust *serverTrust, dir string) error {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, bootstrap.CertFile), filepath.Join(dir, bootstrap.KeyFile))
	if err != nil {
		return err
	}
	// The renewed node learnt the CAs meshca may use from now on.
	if issuers, err := readCAFile(filepath.Join(dir, bootstrap.IssuersFile)); err == nil {
		trust = &serverTrust{issuers: issuers, renewal: true}
	}
	cfg := trust.tlsConfig()
	cfg.Certificates = []tls.Certificate{pair}
	cfg.NextProtos = []string{"h2"}
	d := tls.Dialer{Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", server)
	if err != nil {
		return err
	}
	defer conn.Close()
	// meshca writes its HTTP/2 settings only after it has verified the
	// client certificate: one byte read means it was accepted.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	_, err = conn.Read(make([]byte, 1))
	return err
}
