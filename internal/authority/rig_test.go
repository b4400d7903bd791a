package authority_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// rig is an authority and a registry on one store, wired as meshca wires
// them: the registry issues through the authority, and the authority
// re-keys leaves and audits refusals through the registry. Both method sets
// are promoted.
type rig struct {
	*authority.Authority
	*registry.Registry
	st   *store.Store
	link *link
}

// link is what the authority takes of the registry. A re-key of the
// identity named in failing fails as a signer that is down would.
type link struct {
	reg     *registry.Registry
	failing atomic.Pointer[string]
}

func (l *link) Reissue(ctx context.Context, name, actor, action, note string) error {
	if f := l.failing.Load(); f != nil && *f == name {
		return errors.New("signer unavailable")
	}
	return l.reg.Reissue(ctx, name, actor, action, note)
}

// dataDir is a fresh 0700 data directory.
func dataDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openStore(t testing.TB, dir string) *store.Store {
	t.Helper()
	return testkit.OpenStore(t, dir, store.Config{})
}

func newRig(t testing.TB, st *store.Store, clk clock.Clock) *rig {
	t.Helper()
	return newRigWith(t, st, clk, nil)
}

// newRigWith is newRig with a logger for the authority.
func newRigWith(t testing.TB, st *store.Store, clk clock.Clock, log *slog.Logger) *rig {
	t.Helper()
	td, _ := identity.TrustDomain("mesh.local")
	l := &link{}
	refusals, err := denials.New(denials.Config{Store: st, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authority.New(context.Background(), authority.Config{Store: st, TrustDomain: td, Reissuer: l, Denials: refusals, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r, err := registry.New(context.Background(), registry.Config{Store: st, TrustDomain: td, Issuer: a, Denials: refusals, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	l.reg = r
	return &rig{Authority: a, Registry: r, st: st, link: l}
}

func events(t *testing.T, r *rig) []registry.Event {
	t.Helper()
	evs, err := r.Audit(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

func csr(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func parseCRL(t *testing.T, p []byte) *x509.RevocationList {
	t.Helper()
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "X509 CRL" {
		t.Fatalf("not a PEM CRL: %q", p)
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

func crlSerials(crl *x509.RevocationList) []string {
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, fmt.Sprintf("%x", e.SerialNumber))
	}
	slices.Sort(out)
	return out
}

// publish stores the CRL for what was committed, as the admin API does
// after a revocation.
func publish(t *testing.T, r *rig) {
	t.Helper()
	if err := r.PublishCRL(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// nodeCertOf is the node certificate node uses now.
func nodeCertOf(t *testing.T, r *rig, node string) *x509.Certificate {
	t.Helper()
	var der []byte
	err := r.st.View(context.Background(), func(tx *store.Tx) error {
		n, err := tx.Node(node)
		if err != nil {
			return err
		}
		c, err := tx.Cert(n.CertSerial)
		der = c.DER
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// feedWatch reads the store's change feed as node configuration does.
type feedWatch struct{ sub *store.Subscription }

func watchFeed(t *testing.T, st *store.Store) *feedWatch {
	t.Helper()
	w := &feedWatch{sub: st.Subscribe(0)}
	t.Cleanup(w.sub.Close)
	return w
}

// drain returns what was queued so far, without waiting: an Update queues
// its changes before it returns. trust is a change of the CA set or the
// CRL: what every node's trust bundle is built from.
func (w *feedWatch) drain() (nodes, identities []string, trust bool) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for {
		b, err := w.sub.Next(done)
		if err != nil {
			break
		}
		for _, c := range b.Changes {
			switch c.Kind {
			case store.KindNode:
				nodes = append(nodes, c.Key)
			case store.KindIdentity:
				identities = append(identities, c.Key)
			case store.KindCA, store.KindCRL:
				trust = true
			}
		}
	}
	slices.Sort(nodes)
	slices.Sort(identities)
	return slices.Compact(nodes), slices.Compact(identities), trust
}
