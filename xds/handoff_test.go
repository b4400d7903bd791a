package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/meshca/meshca/nodeapi"
)

type noAuth struct{}

func (noAuth) AuthenticateNode(context.Context, *x509.Certificate) (string, error) {
	return "", errors.New("no")
}

type noJoin struct{}

func (noJoin) Join(context.Context, string, string, []byte) (nodeapi.JoinResponse, error) {
	return nodeapi.JoinResponse{}, errors.New("no")
}
func (noJoin) Renew(context.Context, string, *x509.Certificate, []byte) (nodeapi.JoinResponse, error) {
	return nodeapi.JoinResponse{}, errors.New("no")
}

type noAudit struct{}

func (noAudit) RecordDenial(context.Context, string, string, string) {}

func newHandoffServer(t testing.TB) *Server {
	t.Helper()
	s, err := New(Config{TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.local"), Auth: noAuth{}, Joiner: noJoin{}, Audit: noAudit{},
		Roots:      func() []*x509.Certificate { return nil },
		ServerCert: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, errors.New("no") }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func secretsOf(t *testing.T, s *Server, node string) (map[string]types.Resource, string) {
	t.Helper()
	snap, err := s.cache.GetSnapshot(node)
	if err != nil {
		t.Fatalf("snapshot of %s: %v", node, err)
	}
	return snap.GetResources(resource.SecretType), snap.GetVersion(resource.SecretType)
}

// TestSetNodeAddsTrustAndSetTrustSwapsIt checks the hand-off: SetNode
// publishes the node's resources with the bundle last given to SetTrust,
// SetTrust replaces only the bundle in every node's snapshot (the
// identity secret is the very value handed over, not rebuilt), and
// RemoveNode forgets the node.
func TestSetNodeAddsTrustAndSetTrustSwapsIt(t *testing.T) {
	ctx := context.Background()
	s := newHandoffServer(t)
	const bundleName = "spiffe://mesh.local"
	if err := s.SetTrust(ctx, bundleSecret(bundleName, "ca-1")); err != nil {
		t.Fatal(err)
	}
	web := bundleSecret("spiffe://mesh.local/web", "web")
	for _, n := range []string{"n1", "n2"} {
		if err := s.SetNode(ctx, n, map[string][]types.Resource{resource.SecretType: {web}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	secrets, v1 := secretsOf(t, s, "n1")
	if len(secrets) != 2 || secrets[bundleName] == nil || !s.allowedSecrets("n1")[bundleName] {
		t.Fatalf("n1's secrets %v: want web and the bundle, both allowed", secrets)
	}
	if err := s.SetTrust(ctx, bundleSecret(bundleName, "ca-2")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		secrets, v2 := secretsOf(t, s, n)
		if v2 == v1 {
			t.Fatalf("%s: secret version unchanged after a new bundle", n)
		}
		if got := secrets[bundleName]; !strings.Contains(prototext.Format(got), "ca-2") {
			t.Fatalf("%s: bundle not swapped: %v", n, got)
		}
		if secrets["spiffe://mesh.local/web"] != web {
			t.Fatalf("%s: identity secret rebuilt by a trust swap", n)
		}
	}
	// The same bundle again: nothing to push.
	_, before := secretsOf(t, s, "n1")
	if err := s.SetTrust(ctx, bundleSecret(bundleName, "ca-2")); err != nil {
		t.Fatal(err)
	}
	if _, after := secretsOf(t, s, "n1"); after != before {
		t.Fatal("an unchanged bundle changed the version")
	}
	s.RemoveNode("n1")
	if _, err := s.cache.GetSnapshot("n1"); err == nil || s.knownNode("n1") {
		t.Fatal("removed node still has a snapshot")
	}
	// A trust change does not bring a removed node back.
	if err := s.SetTrust(ctx, bundleSecret(bundleName, "ca-3")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.cache.GetSnapshot("n1"); err == nil {
		t.Fatal("removed node got a snapshot from SetTrust")
	}
}

// TestSetNodeRefusesInvalid checks that an invalid resource fails SetNode
// and leaves the node's previous snapshot in place.
func TestSetNodeRefusesInvalid(t *testing.T) {
	ctx := context.Background()
	s := newHandoffServer(t)
	good := map[string][]types.Resource{resource.SecretType: {bundleSecret("a", "x")}}
	if err := s.SetNode(ctx, "n1", good, nil); err != nil {
		t.Fatal(err)
	}
	_, v := secretsOf(t, s, "n1")
	bad := map[string][]types.Resource{resource.SecretType: {bundleSecret("a", "x"), bundleSecret("a", "y")}}
	if err := s.SetNode(ctx, "n1", bad, nil); !errors.Is(err, errInvalidResource) {
		t.Fatalf("err = %v, want errInvalidResource", err)
	}
	if _, v2 := secretsOf(t, s, "n1"); v2 != v {
		t.Fatal("a refused update replaced the snapshot")
	}
	if s.Stats().InvalidConfigs != 1 {
		t.Fatalf("InvalidConfigs = %d", s.Stats().InvalidConfigs)
	}
}
