package agent_test

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

type x509Updates chan *workloadapi.X509Context

func (u x509Updates) OnX509ContextUpdate(c *workloadapi.X509Context) { u <- c }
func (u x509Updates) OnX509ContextWatchError(error)                  {}

// TestAgentServesWorkloadAPI: go-spiffe's Workload API client on the
// agent's workload socket gets the SVIDs whose selectors this process
// matches (its uid), not one assigned to another uid, for keys the agent
// made; it sees the SVID rotate at the renewal point.
func TestAgentServesWorkloadAPI(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	for _, id := range []string{"web", "api"} {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id}, nil, http.StatusCreated)
	}
	cert := m.addAgentNode("agent-1", "web", "api")
	m.admin("POST", api.PathNodes+"/agent-1/identities", api.AssignRequest{Identity: "web", Selectors: []string{fmt.Sprintf("uid:%d", os.Getuid())}}, nil, http.StatusOK)
	m.admin("POST", api.PathNodes+"/agent-1/identities", api.AssignRequest{Identity: "api", Selectors: []string{fmt.Sprintf("uid:%d", os.Getuid()+1)}}, nil, http.StatusOK)
	socket := filepath.Join(t.TempDir(), "run", "workload.sock")
	a := startAgent(t, agent.Config{Conn: m.dial(m.app.XDS, cert), Node: "agent-1", TrustDomain: td, WorkloadSocket: socket, Clock: clk})
	st := waitState(t, a, "web and api with their selectors", func(s agent.State) bool {
		v, ok := s.SVID("web")
		return len(s.SVIDs) == 2 && s.BundlePEM != nil && ok && len(v.Selectors) == 1
	})
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("workload socket: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	updates := make(x509Updates, 16)
	go func() { _ = client.WatchX509Context(ctx, updates) }()
	next := func(what string, ok func(*workloadapi.X509Context) bool) *workloadapi.X509Context {
		t.Helper()
		for {
			select {
			case c := <-updates:
				if ok(c) {
					return c
				}
			case <-ctx.Done():
				t.Fatalf("Workload API: %s: not within %s", what, waitLimit)
			}
		}
	}
	ids := func(svids []*x509svid.SVID) []string {
		var out []string
		for _, s := range svids {
			out = append(out, s.ID.String())
		}
		slices.Sort(out)
		return out
	}
	web, _ := st.SVID("web")
	first := next("web's SVID", func(c *workloadapi.X509Context) bool { return len(c.SVIDs) > 0 })
	if got := ids(first.SVIDs); !slices.Equal(got, []string{idName("web")}) {
		t.Fatalf("this process (uid %d) gets %v, want web only (api is for another uid)", os.Getuid(), got)
	}
	if !first.SVIDs[0].Certificates[0].PublicKey.(*ecdsa.PublicKey).Equal(web.Key.Public()) {
		t.Fatal("the Workload API serves a certificate for another key than the agent's")
	}
	if b, err := first.Bundles.GetX509BundleForTrustDomain(td); err != nil || len(b.X509Authorities()) == 0 {
		t.Fatalf("no bundle for %s: %v", td, err)
	}

	// Rotation reaches the Workload API client on its open stream.
	clk.Set(agent.DefaultPolicy.RenewAt(web.NotBefore, web.NotAfter, web.Serial).Add(time.Second))
	rotated := next("web rotated", func(c *workloadapi.X509Context) bool {
		return len(c.SVIDs) == 1 && fmt.Sprintf("%x", c.SVIDs[0].Certificates[0].SerialNumber) != web.Serial
	})
	t.Logf("Workload API: web rotated live, serial %s -> %x", web.Serial, rotated.SVIDs[0].Certificates[0].SerialNumber)
}

// TestAgentSDSAttestsCallers: on the SDS socket a caller gets an identity's
// secret only when its peer credentials match the selectors of the
// identity's assignment; the bundle is for any caller; a wildcard request
// only for one that matches every identity; a name the node does not hold
// is refused.
func TestAgentSDSAttestsCallers(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	for _, id := range []string{"web", "api"} {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id}, nil, http.StatusCreated)
	}
	cert := m.addAgentNode("agent-1", "web", "api")
	m.admin("POST", api.PathNodes+"/agent-1/identities", api.AssignRequest{Identity: "web", Selectors: []string{fmt.Sprintf("uid:%d", os.Getuid())}}, nil, http.StatusOK)
	m.admin("POST", api.PathNodes+"/agent-1/identities", api.AssignRequest{Identity: "api", Selectors: []string{fmt.Sprintf("uid:%d", os.Getuid()+1)}}, nil, http.StatusOK)
	socket := filepath.Join(t.TempDir(), "sds.sock")
	a := startAgent(t, agent.Config{Conn: m.dial(m.app.XDS, cert), Node: "agent-1", TrustDomain: td, SDSSocket: socket, Clock: clk})
	waitState(t, a, "web and api with their selectors", func(s agent.State) bool {
		v, ok := s.SVID("api")
		return len(s.SVIDs) == 2 && s.BundlePEM != nil && ok && len(v.Selectors) == 1
	})
	c := sdsClient(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	fetch := func(names ...string) error {
		_, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names})
		return err
	}
	if err := fetch(idName("web"), bundleName); err != nil {
		t.Fatalf("web and the bundle for a caller matching web's selectors: %v", err)
	}
	for _, tc := range []struct {
		name  string
		names []string
	}{
		{"another uid's identity", []string{idName("api")}},
		{"a wildcard", nil},
		{"an identity the node does not hold", []string{idName("billing")}},
	} {
		if err := fetch(tc.names...); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("fetch of %s: %v, want PermissionDenied", tc.name, err)
		}
	}
	// A stream that asks for api is ended with PermissionDenied.
	s := openSotW(t, c, idName("api"))
	if _, err := s.next(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("SotW stream for another uid's identity: %v, want PermissionDenied", err)
	}
	// So is a delta subscription.
	d, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{idName("web"), idName("api")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delta subscription to another uid's identity: %v, want PermissionDenied", err)
	}
}
