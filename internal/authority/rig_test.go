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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// rig is an authority and a registry on one store, wired as meshca wires
// them: the registry issues through the authority and re-keys a rotation's
// leaves (rekey, runRekey), both audit refusals through one recorder. Both
// method sets are promoted.
type rig struct {
	*authority.Authority
	*registry.Registry
	st     *store.Store
	issuer *flakyIssuer
}

// flakyIssuer is the authority as the registry's Issuer; issuing for the
// identity named in failing fails as a signer that is down would.
type flakyIssuer struct {
	*authority.Authority
	failing atomic.Pointer[string]
}

func (f *flakyIssuer) Issue(ctx context.Context, req ca.Request) (*ca.Issued, string, error) {
	if name := f.failing.Load(); name != nil && strings.HasSuffix(req.ID.String(), "/"+*name) {
		return nil, "", errors.New("signer unavailable")
	}
	return f.Authority.Issue(ctx, req)
}

// rekey runs one pass of the registry's re-keying, as RunRekey does when
// the feed reports a change of the CA set.
func (r *rig) rekey(t testing.TB) registry.RekeyResult {
	t.Helper()
	res, err := r.Rekey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// runRekey runs the registry's re-keying loop until the test ends.
func (r *rig) runRekey(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.RunRekey(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// settle waits, following the feed, until no active identity's leaf is
// from another issuer than the CA set's while leaves move to a new CA.
func settle(t testing.TB, st *store.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub := st.Subscribe(0)
	defer sub.Close()
	for {
		n, err := staleCount(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if _, err := sub.Next(ctx); err != nil {
			t.Fatalf("%d leaves still to re-key: %v", n, err)
		}
	}
}

// staleCount counts the active identities whose leaf is not from the CA
// set's issuer, during a rotation's reissuing phase (0 otherwise).
func staleCount(ctx context.Context, st *store.Store) (int, error) {
	n := 0
	err := st.View(ctx, func(tx *store.Tx) error {
		n = 0
		set, err := tx.CASet()
		if err != nil || set.Rotation == nil || set.Rotation.Phase != store.PhaseReissuing {
			return err
		}
		ids, err := tx.Identities()
		if err != nil {
			return err
		}
		for _, id := range ids {
			if id.State != store.StateActive || id.CurrentSerial == "" {
				continue
			}
			c, err := tx.Cert(id.CurrentSerial)
			if err != nil {
				return err
			}
			if c.IssuerSerial != set.IssuerSerial {
				n++
			}
		}
		return nil
	})
	return n, err
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
	refusals, err := denials.New(denials.Config{Store: st, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authority.New(context.Background(), authority.Config{Store: st, TrustDomain: td, Denials: refusals, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	iss := &flakyIssuer{Authority: a}
	r, err := registry.New(context.Background(), registry.Config{Store: st, TrustDomain: td, Issuer: iss, Denials: refusals, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{Authority: a, Registry: r, st: st, issuer: iss}
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
