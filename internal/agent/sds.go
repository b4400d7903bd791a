package agent

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/workload/attest"
	"github.com/meshca/meshca/sds"
)

// localNode is the one snapshot key: every client of the socket is the
// node's own proxy and sees the same secrets, whatever node.id it sends.
const localNode = "local"

type localHash struct{}

func (localHash) ID(*corev3.Node) string { return localNode }

var _ cachev3.NodeHash = localHash{}

// publishDelay bounds how long a state change waits to be published on
// the SDS socket while other certificates are being signed (see settle).
const publishDelay = 50 * time.Millisecond

// sdsServer serves the agent's secrets on a Unix socket.
type sdsServer struct {
	path  string
	lis   net.Listener
	cache cachev3.SnapshotCache
	log   *slog.Logger

	// Secrets already built, reused while what they hold is unchanged:
	// building one parses the key and the chain again.
	certs  map[string]builtCert // by identity
	bundle builtBundle
}

// builtCert is the secret of one identity's certificate.
type builtCert struct {
	serial string
	key    crypto.Signer
	secret types.Resource
}

// builtBundle is the trust-domain secret of one bundle and CRL.
type builtBundle struct {
	bundle, crl []byte
	secret      types.Resource
}

// newSDSServer binds the socket, 0600 (see listenUnix).
func newSDSServer(path string, log *slog.Logger) (*sdsServer, error) {
	lis, err := listenUnix(path, 0o600)
	if err != nil {
		return nil, err
	}
	// ads=false: a request naming some of the secrets is answered with
	// those (Envoy opens one stream per secret).
	return &sdsServer{path: path, lis: lis, cache: cachev3.NewSnapshotCache(false, localHash{}, nil), log: log, certs: map[string]builtCert{}}, nil
}

// listenUnix binds a Unix socket at path with mode: path's directory must
// be this user's and writable by no one else (created 0755 when missing, so
// that a 0666 socket in it can be reached); a stale socket there is
// replaced, any other file refused.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if path == "" || !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%w: %q is not an absolute path", ErrSocketPath, path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return nil, fmt.Errorf("%w: directory %s belongs to uid %d, not to this user (%d): give the socket a directory of its own", ErrSocketPath, dir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("%w: directory %s is writable by others (%s): another user could replace the socket; use a directory only this user may write to", ErrSocketPath, dir, fi.Mode().Perm())
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%w: %s exists and is not a socket", ErrSocketPath, path)
		}
		// A socket left by an agent that did not stop cleanly.
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	return lis, nil
}

// serve publishes every state change as a snapshot and serves SDS until
// ctx ends, then removes the socket. A burst of changes (a CA switch
// re-keys every identity at once) is published as a few states rather
// than one per certificate (settle).
func (s *sdsServer) serve(ctx context.Context, a *Agent) error {
	defer os.Remove(s.path)
	g := sdsGate{a: a, gate: attest.NewGate(attest.GateConfig{Logger: s.log})}
	gs := grpc.NewServer(grpc.Creds(peercred.New()), grpc.MaxConcurrentStreams(100),
		grpc.ChainStreamInterceptor(g.gate.StreamInterceptor(), g.streamInterceptor()),
		grpc.ChainUnaryInterceptor(g.gate.UnaryInterceptor(), g.unaryInterceptor()))
	secretservice.RegisterSecretDiscoveryServiceServer(gs, serverv3.NewServer(ctx, s.cache, nil))
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(s.lis) }()
	defer gs.Stop()
	for {
		st, changed := a.State()
		if err := s.publish(ctx, st); err != nil {
			s.log.Error("secrets not published on the SDS socket; the previous ones are served", logErr, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("sds socket: %w", err)
		case <-changed:
			a.settle(ctx, publishDelay)
		}
	}
}

// publish sets the snapshot of st: one certificate secret per identity and
// the trust-domain bundle with its CRLs, named as meshca names them.
func (s *sdsServer) publish(ctx context.Context, st State) error {
	secrets, err := s.secretsOf(st)
	if err != nil {
		return err
	}
	snap, err := cachev3.NewSnapshot(strconv.FormatUint(st.Version, 10), map[resource.Type][]types.Resource{resource.SecretType: secrets})
	if err != nil {
		return err
	}
	return s.cache.SetSnapshot(ctx, localNode, snap)
}

// secretsOf returns the secrets of st, building only those whose
// certificate, bundle or CRL changed since the last call.
func (s *sdsServer) secretsOf(st State) ([]types.Resource, error) {
	out := make([]types.Resource, 0, len(st.SVIDs)+1)
	held := make(map[string]bool, len(st.SVIDs))
	for _, v := range st.SVIDs {
		held[v.Identity] = true
		if b, ok := s.certs[v.Identity]; ok && b.serial == v.Serial && b.key == v.Key {
			out = append(out, b.secret)
			continue
		}
		kp, err := keyPEM(v.Key)
		if err != nil {
			return nil, err
		}
		sec, err := sds.TLSSecret(v.ID.String(), v.ChainPEM, kp)
		if err != nil {
			return nil, err
		}
		s.certs[v.Identity] = builtCert{serial: v.Serial, key: v.Key, secret: sec}
		out = append(out, sec)
	}
	for name := range s.certs {
		if !held[name] {
			delete(s.certs, name)
		}
	}
	if st.BundlePEM != nil {
		b := s.bundle
		if b.secret == nil || !bytes.Equal(b.bundle, st.BundlePEM) || !bytes.Equal(b.crl, st.CRLPEM) {
			sec, err := sds.ValidationSecret(sds.BundleName(st.TrustDomain), st.BundlePEM, st.CRLPEM)
			if err != nil {
				return nil, err
			}
			s.bundle = builtBundle{bundle: st.BundlePEM, crl: st.CRLPEM, secret: sec}
		}
		out = append(out, s.bundle.secret)
	}
	return out, nil
}
