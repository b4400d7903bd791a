package app_test

// TestRotationSoak: many nodes, short-lived certificates, time compressed
// with the fake clock. See RELIABILITY.md. MESHCA_SEED=N replays a run;
// MESHCA_SOAK=1 runs the longer variant.

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
)

// soakNode is one node holding one identity over one ADS stream.
type soakNode struct {
	name, identity string
	h              *holder
	serials        map[string]bool
}

// applyChecked applies one update and counts secrets the node is not
// entitled to: any name but its identity's and the bundle's, or an identity
// secret whose leaf is not the node's identity.
func (n *soakNode) applyChecked(t *testing.T, u map[string]*tlsv3.Secret) (unentitled int) {
	t.Helper()
	for name, s := range u {
		switch name {
		case secretName(""):
		case secretName(n.identity):
			c := tlsCert(t, s)
			if len(c.Leaf.URIs) != 1 || c.Leaf.URIs[0].String() != secretName(n.identity) {
				t.Errorf("U: node %s got a certificate for %v under its own secret name", n.name, c.Leaf.URIs)
				unentitled++
				continue
			}
		default:
			t.Errorf("U: node %s got secret %s", n.name, name)
			unentitled++
			continue
		}
		n.h.secrets[name] = s
	}
	return unentitled
}

// check verifies the held certificate at now against the held bundle.
func (n *soakNode) check(t *testing.T, now time.Time) error {
	s, b := n.h.secrets[secretName(n.identity)], n.h.secrets[secretName("")]
	if s == nil || b == nil {
		return fmt.Errorf("holds identity secret %v, bundle %v", s != nil, b != nil)
	}
	c := tlsCert(t, s)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b.GetValidationContext().GetTrustedCa().GetInlineBytes()) {
		return fmt.Errorf("no root in the bundle secret")
	}
	inter := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		inter.AddCert(ic)
	}
	chains, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("certificate %x: %w", c.Leaf.SerialNumber, err)
	}
	if issuer := chains[0][1]; c.Leaf.NotAfter.After(issuer.NotAfter) {
		return fmt.Errorf("certificate %x NotAfter %s is after its issuer's %s", c.Leaf.SerialNumber, c.Leaf.NotAfter, issuer.NotAfter)
	}
	n.serials[fmt.Sprintf("%x", c.Leaf.SerialNumber)] = true
	return nil
}

func TestRotationSoak(t *testing.T) {
	rng := testkit.Rand(t)
	const (
		nodes = 30
		ttl   = 5 * time.Minute // meshca's minimum leaf TTL
		step  = 10 * time.Second
	)
	ttls := 3
	if testkit.Soak() {
		ttls = 10
	}
	steps := int(time.Duration(ttls) * ttl / step)
	start := time.Now()

	// The fake clock starts at a random offset from now, so renewal times
	// fall differently against the 10s steps from run to run.
	clk := clock.NewFake(time.Now().Add(time.Duration(rng.Int64N(int64(time.Minute)))))
	m := startMesh(t, clk)
	var ns []*soakNode
	for i := 0; i < nodes; i++ {
		n := &soakNode{name: fmt.Sprintf("soak-node-%02d", i), identity: fmt.Sprintf("soak-%02d", i), serials: map[string]bool{}}
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: n.identity, TTL: ttl.String()}, nil, http.StatusCreated)
		cert := m.joined(n.name, n.identity)
		n.h = &holder{p: subscribe(t, m, n.name, cert, secretName(""), secretName(n.identity)), secrets: map[string]*tlsv3.Secret{}}
		ns = append(ns, n)
	}
	// Visit the nodes in a seeded order, so a slow node is not always last.
	rng.Shuffle(len(ns), func(i, j int) { ns[i], ns[j] = ns[j], ns[i] })

	unentitled := 0
	var slowest time.Duration
	for s := 0; s <= steps; s++ {
		// The clock moves only while every loop is parked, and each step
		// waits until they are parked again: every renewal due by now has
		// been made. Then each node must come to hold its identity's
		// current certificate: every renewal is seen, at the step it is
		// made.
		if s > 0 {
			advance(t, clk, step)
		} else {
			settle(t, clk)
		}
		now := clk.Now()
		stepStart := time.Now()
		current := m.serials()
		for _, n := range ns {
			n.h.awaitWith(t, fmt.Sprintf("step %d/%d (fake +%s): node %s holds certificate %s", s, steps, time.Duration(s)*step, n.name, current[n.identity]),
				func(u map[string]*tlsv3.Secret) { unentitled += n.applyChecked(t, u) },
				func() bool { return n.h.holds(t, n.identity, current[n.identity]) })
			if err := n.check(t, now); err != nil {
				t.Fatalf("step %d/%d (fake +%s): node %s: %v", s, steps, time.Duration(s)*step, n.name, err)
			}
		}
		slowest = max(slowest, time.Since(stepStart))
		if unentitled != 0 {
			t.Fatalf("step %d: U=%d", s, unentitled)
		}
	}

	renewals, minCerts := 0, int(^uint(0)>>1)
	for _, n := range ns {
		renewals += len(n.serials) - 1
		minCerts = min(minCerts, len(n.serials))
	}
	audited := 0
	for _, e := range m.audit() {
		if e.Action == "identity.reissue" && e.Actor == "rotation" && e.Outcome == "ok" {
			audited++
		}
	}
	// Each step waited for every node to hold its identity's current
	// certificate, so every renewal made is seen, exactly once.
	if renewals != audited {
		t.Fatalf("renewals seen %d, rotation reissues audited %d: a renewal was missed", renewals, audited)
	}
	// Renewal at 40-50% of the lifetime, seen at 10s steps: a node renews at
	// least every 2/3 of a TTL, with margin.
	if want := ttls * 3 / 2; minCerts-1 < want {
		t.Fatalf("a node went through %d certificates in %d TTLs, want at least %d renewals", minCerts, ttls, want)
	}
	t.Logf("nodes %d, steps %d of %s (%s fake = %d TTLs of %s), renewals seen %d (fewest certificates on a node %d), rotation reissues audited %d, slowest step %s, U=%d, %s",
		nodes, steps, step, time.Duration(steps)*step, ttls, ttl, renewals, minCerts, audited, slowest.Round(time.Millisecond), unentitled, time.Since(start).Round(time.Millisecond))
	if unentitled != 0 {
		t.Fatalf("U=%d", unentitled)
	}
}
