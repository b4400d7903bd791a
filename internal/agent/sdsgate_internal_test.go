package agent

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/internal/workload/attest"
)

// A state published just before an identity was unassigned still holds
// its secret: a wildcard answer (state of the world or fetch) must not
// carry it to a caller that the assignments no longer allow. And names
// beside a delta wildcard's "*" are checked like any other, so that a
// stream cannot keep names that are no secret of the node.
func TestSDSGateWildcardFollowsAssignments(t *testing.T) {
	const td = "spiffe://mesh.local"
	g := sdsGate{
		a:      &Agent{selectors: map[string][]string{"web": nil}},
		gate:   attest.NewGate(attest.GateConfig{}),
		bundle: td,
	}
	c := peercred.Caller{UID: 1000, GID: 1000, PID: 42, Path: "/usr/bin/envoy"}
	cur := &published{version: "7", names: []string{td, td + "/gone", td + "/web"}, secrets: map[string]*secret{}}
	for _, n := range cur.names {
		cur.secrets[n] = &secret{version: n}
	}

	if err := g.checkCaller(c, nil, true); err != nil {
		t.Fatalf("wildcard of a caller every assignment allows: %v", err)
	}
	_, versions := sotwAnswer(cur, nil, true, g.mayHave(c))
	got := make([]string, 0, len(versions))
	for n := range versions {
		got = append(got, n)
	}
	slices.Sort(got)
	if want := []string{td, td + "/web"}; !slices.Equal(got, want) {
		t.Fatalf("wildcard answer carries %v, want %v (gone is no longer assigned)", got, want)
	}

	junk := td + "/" + strings.Repeat("x", 64<<10)
	err := g.checkCaller(c, []string{"*", junk}, true)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a name beside \"*\" that is no identity of the node: %v, want PermissionDenied", err)
	}
	if err := g.checkCaller(c, []string{"*", td + "/web"}, true); err != nil {
		t.Fatalf("an assigned name beside \"*\": %v", err)
	}
}

// One certificate that does not build (here a chain that does not parse)
// is left out; the others and the bundle with its CRL are still published.
func TestSDSOneBadCertificateHoldsBackNothingElse(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	ca := testkit.NewCA(t, pkix.Name{CommonName: "root"}, time.Now().Add(time.Hour), nil)
	key := testkit.Key(t)
	webID := spiffeid.RequireFromPath(td, "/web")
	leaf := ca.Sign(t, &x509.Certificate{SerialNumber: testkit.Serial(t), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{webID.URL()}, KeyUsage: x509.KeyUsageDigitalSignature}, key.Public())
	st := State{TrustDomain: td, BundlePEM: testkit.CertPEM(ca.Cert.Raw), Version: 3, SVIDs: []SVID{
		{Identity: "bad", ID: spiffeid.RequireFromPath(td, "/bad"), ChainPEM: []byte("not a certificate"), Key: testkit.Key(t), Serial: "01"},
		{Identity: "web", ID: webID, ChainPEM: testkit.CertPEM(leaf.Raw), Key: key, Serial: leaf.SerialNumber.Text(16)},
	}}
	s := &sdsServer{certs: map[string]builtCert{}, log: slog.New(slog.DiscardHandler)}
	secrets, err := s.secretsOf(st)
	if err != nil {
		t.Fatalf("one bad certificate failed the whole state: %v", err)
	}
	for name, want := range map[string]bool{"spiffe://mesh.local": true, "spiffe://mesh.local/web": true, "spiffe://mesh.local/bad": false} {
		if got := secrets[name] != nil; got != want {
			t.Errorf("secret %s published: %v, want %v", name, got, want)
		}
	}
}
