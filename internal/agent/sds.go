package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/lograte"
	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/workload/attest"
	"github.com/meshca/meshca/sds"
)

// secretType is the type URL of Envoy's Secret, the one type the socket
// serves (spelt out: go-control-plane's resource package would link the
// listener protos into the agent).
const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// publishDelay bounds how long a state change waits to be published on
// the SDS socket while other certificates are being signed (see settle).
const publishDelay = 50 * time.Millisecond

// Bounds of the SDS socket, per caller.
const (
	// maxNames bounds the names of one request (a delta request's
	// subscriptions, unsubscriptions and initial versions together) and
	// the names one delta stream is subscribed to: a proxy names at most
	// every identity of its node and the bundle.
	maxNames = 4096
	// maxRequestBytes bounds one request on the wire.
	maxRequestBytes = 4 << 20
	// maxStreams bounds the streams of one connection.
	maxStreams = 100
)

// secret is one secret as the socket serves it: encoded once when its
// certificate (or bundle and CRL) changes, and shared by every stream and
// every answer until then.
type secret struct {
	identity string // "" for the trust bundle
	version  string // a digest of its encoding: its delta version
	any      *anypb.Any
	delta    *discoveryv3.Resource
}

// published is one state of the socket. Its fields are never modified.
type published struct {
	version string             // the agent's state version; "" until the first
	secrets map[string]*secret // by name
	names   []string           // of secrets, sorted
	next    chan struct{}      // closed when a newer state is published
}

// sdsServer serves the agent's secrets on a Unix socket: Envoy's
// SecretDiscoveryService, state of the world, delta and fetch, each
// request attested (sdsGate).
type sdsServer struct {
	path    string
	lis     net.Listener
	log     *slog.Logger
	nackLog *slog.Logger // rate-limited: a proxy may reject in a loop
	gate    sdsGate

	mu  sync.Mutex
	cur *published

	// Secrets already built, reused while what they hold is unchanged:
	// building one parses the key and the chain again and encodes it.
	// Only the publishing goroutine uses them.
	certs  map[string]builtCert // by identity
	bundle builtBundle
}

var _ secretv3.SecretDiscoveryServiceServer = (*sdsServer)(nil)

// builtCert is the secret of one identity's certificate.
type builtCert struct {
	serial string
	key    crypto.Signer
	secret *secret
}

// builtBundle is the trust-domain secret of one bundle and CRL.
type builtBundle struct {
	bundle, crl []byte
	secret      *secret
}

// newSDSServer binds the socket, 0600 (see listenUnix), for a's secrets.
func newSDSServer(path string, a *Agent) (*sdsServer, error) {
	lis, err := listenUnix(path, 0o600)
	if err != nil {
		return nil, err
	}
	return &sdsServer{
		path:    path,
		lis:     lis,
		log:     a.log,
		nackLog: slog.New(lograte.New(a.log.Handler(), lograte.Config{Now: a.cfg.Clock.Now})),
		gate:    sdsGate{a: a, gate: attest.NewGate(attest.GateConfig{Logger: a.log}), bundle: sds.BundleName(a.cfg.TrustDomain)},
		cur:     &published{next: make(chan struct{})},
		certs:   map[string]builtCert{},
	}, nil
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

// serve publishes every state change and serves SDS until ctx ends, then
// removes the socket. A burst of changes (a CA switch re-keys every
// identity at once) is published as a few states rather than one per
// certificate (settle).
func (s *sdsServer) serve(ctx context.Context, a *Agent) error {
	defer os.Remove(s.path)
	gs := grpc.NewServer(grpc.Creds(peercred.New()), grpc.MaxConcurrentStreams(maxStreams), grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.StreamInterceptor(s.gate.gate.StreamInterceptor()), grpc.UnaryInterceptor(s.gate.gate.UnaryInterceptor()))
	secretv3.RegisterSecretDiscoveryServiceServer(gs, s)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(s.lis) }()
	defer gs.Stop()
	for {
		st, changed := a.State()
		if err := s.publish(st); err != nil {
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

// current returns the state streams answer from.
func (s *sdsServer) current() *published {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// publish makes st the state every stream answers from, and wakes them:
// one certificate secret per identity and the trust-domain bundle with its
// CRLs, named as meshca names them.
func (s *sdsServer) publish(st State) error {
	secrets, err := s.secretsOf(st)
	if err != nil {
		return err
	}
	p := &published{version: strconv.FormatUint(st.Version, 10), secrets: secrets, next: make(chan struct{})}
	for name := range secrets {
		p.names = append(p.names, name)
	}
	slices.Sort(p.names)
	s.mu.Lock()
	prev := s.cur
	s.cur = p
	s.mu.Unlock()
	close(prev.next)
	return nil
}

// certSecret builds the secret of one identity's certificate and key.
func certSecret(name string, v SVID) (*secret, error) {
	kp, err := keyPEM(v.Key)
	if err != nil {
		return nil, err
	}
	msg, err := sds.TLSSecret(name, v.ChainPEM, kp)
	if err != nil {
		return nil, err
	}
	return encodeSecret(name, v.Identity, msg)
}

// secretsOf returns the secrets of st by name, building only those whose
// certificate, bundle or CRL changed since the last call.
func (s *sdsServer) secretsOf(st State) (map[string]*secret, error) {
	out := make(map[string]*secret, len(st.SVIDs)+1)
	held := make(map[string]bool, len(st.SVIDs))
	for _, v := range st.SVIDs {
		held[v.Identity] = true
		name := v.ID.String()
		if b, ok := s.certs[v.Identity]; ok && b.serial == v.Serial && b.key == v.Key {
			out[name] = b.secret
			continue
		}
		sec, err := certSecret(name, v)
		if err != nil {
			// One certificate that does not build must not hold back the
			// others, nor the bundle and its CRL: the previous one of this
			// identity, if any, is served meanwhile.
			s.log.Error("certificate not published on the SDS socket; its previous one, if any, is served", logIdentity, v.Identity, "serial", v.Serial, logErr, err)
			if b, ok := s.certs[v.Identity]; ok {
				out[name] = b.secret
			}
			continue
		}
		s.certs[v.Identity] = builtCert{serial: v.Serial, key: v.Key, secret: sec}
		out[name] = sec
	}
	for name := range s.certs {
		if !held[name] {
			delete(s.certs, name)
		}
	}
	if st.BundlePEM != nil {
		name := sds.BundleName(st.TrustDomain)
		b := s.bundle
		if b.secret == nil || !bytes.Equal(b.bundle, st.BundlePEM) || !bytes.Equal(b.crl, st.CRLPEM) {
			msg, err := sds.ValidationSecret(name, st.BundlePEM, st.CRLPEM)
			if err != nil {
				return nil, err
			}
			sec, err := encodeSecret(name, "", msg)
			if err != nil {
				return nil, err
			}
			s.bundle = builtBundle{bundle: st.BundlePEM, crl: st.CRLPEM, secret: sec}
		}
		out[name] = s.bundle.secret
	}
	return out, nil
}

// encodeSecret encodes msg once, for every answer that carries it.
func encodeSecret(name, identity string, msg proto.Message) (*secret, error) {
	a, err := anypb.New(msg)
	if err != nil {
		return nil, fmt.Errorf("encode secret %q: %w", name, err)
	}
	sum := sha256.Sum256(a.GetValue())
	version := hex.EncodeToString(sum[:8])
	return &secret{identity: identity, version: version, any: a,
		delta: &discoveryv3.Resource{Name: name, Version: version, Resource: a}}, nil
}

// logNACK reports a proxy's rejection of an answer, at most a few times a
// minute. The proxy's message is quoted unless it carries PEM: a rejection
// must not put key material into the log.
func (s *sdsServer) logNACK(c peercred.Caller, stream, version, nonce string, names int, detail string) {
	if bytes.Contains([]byte(detail), []byte("-----BEGIN")) {
		detail = "(withheld: it quotes PEM)"
	} else if len(detail) > 300 {
		detail = detail[:300] + "…"
	}
	s.nackLog.Warn("the proxy rejected secrets sent on the SDS socket; they are sent again when they change",
		logCaller, c.String(), logStream, stream, logVersion, version, logNonce, nonce, logNames, names, logDetail, detail)
}

// Log attribute keys of the SDS socket.
const (
	logCaller  = "caller"
	logStream  = "stream"
	logVersion = "version"
	logNonce   = "nonce"
	logNames   = "names"
	logDetail  = "detail"
)

// receive passes what recv returns to out until it fails (its error then
// goes to the returned channel) or ctx ends: a stream's handler selects on
// its requests and on state changes together.
func receive[T any](ctx context.Context, recv func() (T, error), out chan<- T) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case out <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return errc
}
