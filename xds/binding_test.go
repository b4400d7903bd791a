package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/nodeapi"
)

// TestNodeIDMustBeTheBoundNode: the stream is bound to the node of the
// connection's certificate; a request naming any other node.id (or none)
// is refused on every kind of call, even for the bundle every node may
// receive, and the refusal is counted and audited.
func TestNodeIDMustBeTheBoundNode(t *testing.T) {
	askers := append(slices.Clone(secretAskers), secretAskersUntyped...)
	askers = append(askers, sotwAsker("SotW ADS, listeners", ads, "StreamAggregatedResources"))
	ids := []struct {
		name string
		node *core.Node
		want string // in the refusal
	}{
		{"another registered node", nodeID("db"), `node.id "db"`},
		{"empty node.id", nodeID(""), `node.id ""`},
		{"no node", nil, `node.id`},
		{"different case", nodeID("WEB"), `node.id "WEB"`},
		{"trailing space", nodeID("web "), `node.id "web "`},
	}
	for _, a := range askers {
		t.Run(a.name, func(t *testing.T) {
			for _, id := range ids {
				t.Run(id.name, func(t *testing.T) {
					f := newFixture(t)
					meshOfTwo(f)
					typeURL := resource.SecretType
					if strings.HasSuffix(a.name, "listeners") {
						typeURL = resource.ListenerType
					}
					got, err := a.ask(f, f.nodeConn("web"), id.node, typeURL, []string{bundleName})
					if status.Code(err) != codes.PermissionDenied || got != nil {
						t.Fatalf("served %v, err %v; want PermissionDenied", got, err)
					}
					if msg := status.Convert(err).Message(); !strings.Contains(msg, id.want) || !strings.Contains(msg, `node "web"`) {
						t.Errorf("refusal %q does not say %s and the bound node", msg, id.want)
					}
					if d := f.s.Stats().Denied; d != 1 {
						t.Errorf("denied counter = %d, want 1", d)
					}
					if f.denialsLike(ActionRequest, "web", id.want) != 1 {
						t.Errorf("refusal not audited under web: %v", f.audit.all())
					}
				})
			}
		})
	}
}

// TestLaterRequestCannotSwitchNode: go-control-plane lets a later request
// replace the stream's node; the server must refuse it, after having
// served the first.
func TestLaterRequestCannotSwitchNode(t *testing.T) {
	type opened struct {
		name   string
		delta  bool
		desc   *grpc.ServiceDesc
		method string
	}
	for _, o := range []opened{
		{"SotW ADS", false, ads, "StreamAggregatedResources"},
		{"SotW SDS", false, sds, "StreamSecrets"},
		{"delta ADS", true, ads, "DeltaAggregatedResources"},
		{"delta SDS", true, sds, "DeltaSecrets"},
	} {
		t.Run(o.name, func(t *testing.T) {
			f := newFixture(t)
			meshOfTwo(f)
			cl := f.open(f.nodeConn("web"), o.desc, o.method, f.xds)
			first := func(node *core.Node, names ...string) {
				if o.delta {
					cl.send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNamesSubscribe: names})
				} else {
					cl.send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: names})
				}
			}
			first(nodeID("web"), secretOf("web"))
			resp := cl.next()
			if got := namesOf(t, resp); !slices.Equal(got, []string{secretOf("web")}) {
				t.Fatalf("first answer %v", got)
			}
			if s := f.s.Status("web").Streams; s != 1 {
				t.Fatalf("web has %d streams, want 1", s)
			}
			// The same stream now claims to be db, for db's own secret.
			if o.delta {
				cl.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("db"), TypeUrl: resource.SecretType, ResponseNonce: resp.(*discovery.DeltaDiscoveryResponse).GetNonce(),
					ResourceNamesSubscribe: []string{secretOf("db")}})
			} else {
				r := resp.(*discovery.DiscoveryResponse)
				cl.send(&discovery.DiscoveryRequest{Node: nodeID("db"), TypeUrl: resource.SecretType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(),
					ResourceNames: []string{secretOf("db")}})
			}
			if err := cl.wait(); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("stream ended with %v, want PermissionDenied", err)
			}
			cl.sentNothing()
			if d := f.s.Stats().Denied; d != 1 {
				t.Errorf("denied counter = %d, want 1", d)
			}
			if f.denialsLike(ActionRequest, "web", `node.id "db"`) != 1 {
				t.Errorf("switch not audited under web: %v", f.audit.all())
			}
			if s := f.s.Status("web").Streams; s != 0 {
				t.Errorf("web has %d streams after the refusal, want 0", s)
			}
		})
	}
}

// TestStreamsBoundToTheirOwnNodes: two nodes' SotW and delta streams are
// open at once, with the same stream number (go-control-plane counts SotW
// and delta streams apart): each is served its own node's secrets and
// refused the other's node.id.
func TestStreamsBoundToTheirOwnNodes(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	web := f.open(f.nodeConn("web"), ads, "StreamAggregatedResources", f.xds)
	db := f.open(f.nodeConn("db"), ads, "DeltaAggregatedResources", f.xds)
	web.send(&discovery.DiscoveryRequest{Node: nodeID("web"), TypeUrl: resource.SecretType})
	db.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("db"), TypeUrl: resource.SecretType})
	if got := namesOf(t, web.next()); !slices.Equal(got, []string{bundleName, secretOf("web")}) {
		t.Fatalf("web's wildcard served %v", got)
	}
	if got := namesOf(t, db.next()); !slices.Equal(got, []string{bundleName, secretOf("db")}) {
		t.Fatalf("db's wildcard served %v", got)
	}
	if f.s.cb.bound(streamKey{id: 1}).node != "web" || f.s.cb.bound(streamKey{delta: true, id: 1}).node != "db" {
		t.Fatalf("streams bound to %+v and %+v", f.s.cb.bound(streamKey{id: 1}), f.s.cb.bound(streamKey{delta: true, id: 1}))
	}
	// db's delta stream 1 claiming web is refused; web's SotW stream 1 stays.
	db.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("web"), TypeUrl: resource.ListenerType})
	if err := db.wait(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("db claiming web: %v, want PermissionDenied", err)
	}
	if web.ended() {
		t.Fatalf("web's stream ended with db's: %v", web.err)
	}
	if st := f.s.Status("web"); st.Streams != 1 {
		t.Fatalf("web has %d streams, want 1", st.Streams)
	}
}

// TestStreamNeedsNodeCertificate: a call without a valid node certificate
// is refused Unauthenticated before any handler runs, and counted.
func TestStreamNeedsNodeCertificate(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	now := f.clk.Now()
	expiring := f.ca.issue(t, "node/web", now, now.Add(time.Minute), x509.ExtKeyUsageClientAuth)
	workload := f.ca.issue(t, "web", now, now.Add(time.Hour), x509.ExtKeyUsageClientAuth)
	nested := f.ca.issue(t, "node/web/x", now, now.Add(time.Hour), x509.ExtKeyUsageClientAuth)
	f.clk.Add(2 * time.Minute) // expiring is now expired
	tests := []struct {
		name string
		ctx  context.Context
	}{
		{"no peer", t.Context()},
		{"peer without TLS", peer.NewContext(t.Context(), &peer.Peer{})},
		{"TLS without a certificate", tlsPeer(t.Context())},
		{"node certificate expired since the handshake", tlsPeer(t.Context(), expiring)},
		{"workload certificate", tlsPeer(t.Context(), workload)},
		{"not a node name", tlsPeer(t.Context(), nested)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.s.Stats().Unauthenticated
			ran := false
			h := func(any, grpc.ServerStream) error { ran = true; return nil }
			err := f.s.authStream(nil, &fakeStream{ctx: tt.ctx}, &grpc.StreamServerInfo{FullMethod: "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"}, h)
			if status.Code(err) != codes.Unauthenticated || ran {
				t.Fatalf("stream: err %v, handler ran %v; want Unauthenticated before the handler", err, ran)
			}
			_, err = f.s.authUnary(tt.ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"},
				func(context.Context, any) (any, error) { ran = true; return nil, nil })
			if status.Code(err) != codes.Unauthenticated || ran {
				t.Fatalf("unary: err %v, handler ran %v; want Unauthenticated before the handler", err, ran)
			}
			if n := f.s.Stats().Unauthenticated - before; n != 2 {
				t.Fatalf("unauthenticated counter moved by %d, want 2", n)
			}
		})
	}
	// Control: the same checks pass a valid node certificate.
	ctx := tlsPeer(t.Context(), f.nodeCert("web"))
	var bound string
	err := f.s.authStream(nil, &fakeStream{ctx: ctx}, &grpc.StreamServerInfo{}, func(_ any, ss grpc.ServerStream) error {
		bound, _ = nodeFrom(ss.Context())
		return nil
	})
	if err != nil || bound != "web" {
		t.Fatalf("valid node certificate: err %v, bound %q", err, bound)
	}
}

// TestRevokedNodeRefusedAtOpen: a revoked node's certificate still
// completes the handshake; every stream and call it opens is refused
// saying so, counted and audited, and nothing is tracked for it.
func TestRevokedNodeRefusedAtOpen(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	c := f.nodeConn("gone")
	ran := false
	err := f.s.authStream(nil, &fakeStream{ctx: c.ctx}, &grpc.StreamServerInfo{FullMethod: "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"},
		func(any, grpc.ServerStream) error { ran = true; return nil })
	if status.Code(err) != codes.PermissionDenied || ran || !strings.Contains(status.Convert(err).Message(), "was revoked") {
		t.Fatalf("stream: err %v, handler ran %v; want PermissionDenied saying revoked", err, ran)
	}
	if _, err := f.fetch(c.ctx, sds, "FetchSecrets", &discovery.DiscoveryRequest{Node: nodeID("gone")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("fetch: %v, want PermissionDenied", err)
	}
	if d := f.s.Stats().Denied; d != 2 {
		t.Errorf("denied counter = %d, want 2", d)
	}
	if n := f.denialsLike(ActionAuth, "gone", "not registered or was revoked"); n != 2 {
		t.Errorf("%d audit records for the revoked node's stream and call, want 2: %v", n, f.audit.all())
	}
	f.s.streamsMu.Lock()
	tracked := len(f.s.cancels["gone"])
	f.s.streamsMu.Unlock()
	if tracked != 0 {
		t.Errorf("%d streams tracked for a refused node", tracked)
	}
}

// TestCallbacksRefuseUnboundStreams: should a stream reach
// go-control-plane without a bound node, the callbacks refuse it rather
// than trust the request's node.id.
func TestCallbacksRefuseUnboundStreams(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	cb := f.s.cb
	unbound := tlsPeer(t.Context(), f.nodeCert("web")) // a peer, but no bound node
	if err := cb.OnStreamOpen(unbound, 7, resource.AnyType); status.Code(err) != codes.Unauthenticated {
		t.Errorf("OnStreamOpen: %v", err)
	}
	if err := cb.OnDeltaStreamOpen(unbound, 7, resource.AnyType); status.Code(err) != codes.Unauthenticated {
		t.Errorf("OnDeltaStreamOpen: %v", err)
	}
	req := &discovery.DiscoveryRequest{Node: nodeID("web"), TypeUrl: resource.SecretType, ResourceNames: []string{bundleName}}
	if err := cb.OnStreamRequest(7, req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("OnStreamRequest on a stream never opened: %v", err)
	}
	if err := cb.OnStreamDeltaRequest(7, &discovery.DeltaDiscoveryRequest{Node: nodeID("web"), TypeUrl: resource.SecretType}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("OnStreamDeltaRequest on a stream never opened: %v", err)
	}
	if err := cb.OnFetchRequest(unbound, req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("OnFetchRequest: %v", err)
	}
	// Control: bound, the same requests pass.
	bound := context.WithValue(t.Context(), nodeKey{}, "web")
	if err := cb.OnStreamOpen(bound, 7, resource.AnyType); err != nil {
		t.Fatal(err)
	}
	if err := cb.OnStreamRequest(7, req); err != nil {
		t.Errorf("bound OnStreamRequest: %v", err)
	}
	if err := cb.OnFetchRequest(bound, req); err != nil {
		t.Errorf("bound OnFetchRequest: %v", err)
	}
	cb.OnStreamClosed(7, nil)
	if err := cb.OnStreamRequest(7, req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("OnStreamRequest after close: %v", err)
	}
}

// TestHandshakeAuthenticatesNode: the connection's node comes from a
// certificate that chains to meshca's issuing CA and that the
// Authenticator recognises; a revoked node's completes the handshake (its
// calls are then refused saying why); anything else fails it, counted and
// audited.
func TestHandshakeAuthenticatesNode(t *testing.T) {
	f := newFixture(t)
	now := f.clk.Now()
	other := newTestCA(t, "another CA under the same organisation", now)
	good := f.nodeCert("web")
	revoked := f.nodeCert("gone")
	f.auth.errs[revoked.SerialNumber.String()] = ErrNodeRevoked
	failing := f.nodeCert("flaky")
	f.auth.errs[failing.SerialNumber.String()] = errors.New("store unavailable")
	unknown := f.ca.issue(t, "node/web", now, now.Add(time.Hour), x509.ExtKeyUsageClientAuth) // not recorded
	foreign := other.issue(t, "node/web", now, now.Add(time.Hour), x509.ExtKeyUsageClientAuth)
	serverOnly := f.ca.issue(t, "node/web", now, now.Add(time.Hour), x509.ExtKeyUsageServerAuth)
	expired := f.ca.issue(t, "node/web", now, now.Add(-time.Minute), x509.ExtKeyUsageClientAuth)
	f.auth.nodes[serverOnly.SerialNumber.String()] = "web"
	f.auth.nodes[expired.SerialNumber.String()] = "web"

	tests := []struct {
		name      string
		chain     []*x509.Certificate
		want      string // node; "" when refused
		askedAuth bool   // the Authenticator was consulted
		failure   bool   // counted as an authentication failure
		audited   bool   // audited here (the Authenticator audits its own refusals)
	}{
		{"recorded node certificate", []*x509.Certificate{good}, "web", true, false, false},
		{"revoked node", []*x509.Certificate{revoked}, "gone", true, false, false},
		{"authenticator fails", []*x509.Certificate{failing}, "", true, true, false},
		{"not the recorded certificate", []*x509.Certificate{unknown}, "", true, true, false},
		{"issued by another CA", []*x509.Certificate{foreign}, "", false, true, true},
		{"another CA's chain up to it", []*x509.Certificate{foreign, other.cert}, "", false, true, true},
		{"no client auth usage", []*x509.Certificate{serverOnly}, "", false, true, true},
		{"expired", []*x509.Certificate{expired}, "", false, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls, failures, audits := f.auth.calledTimes(), f.s.Stats().AuthFailures, len(f.audit.all())
			// Through the handshake's own hook, as crypto/tls calls it.
			var revokedAtHandshake bool
			err := f.s.verifyConnection(&revokedAtHandshake)(tls.ConnectionState{PeerCertificates: tt.chain})
			node, revoked, err2 := f.s.verifyNode(tt.chain)
			if (err == nil) != (err2 == nil) {
				t.Fatalf("VerifyConnection %v, verifyNode %v", err, err2)
			}
			// A revoked node's genuine certificate completes the handshake
			// marked revoked, so that the Join-only server refuses its calls.
			if want := tt.name == "revoked node"; revoked != want || revokedAtHandshake != want {
				t.Errorf("revoked = %v (at the handshake %v), want %v", revoked, revokedAtHandshake, want)
			}
			if tt.want == "" && err == nil {
				t.Fatalf("accepted as %q", node)
			}
			if tt.want != "" && (err != nil || node != tt.want) {
				t.Fatalf("node %q, err %v; want %q", node, err, tt.want)
			}
			if asked := f.auth.calledTimes() > calls; asked != tt.askedAuth {
				t.Errorf("Authenticator consulted: %v, want %v", asked, tt.askedAuth)
			}
			if counted := f.s.Stats().AuthFailures - failures; counted != map[bool]int64{false: 0, true: 2}[tt.failure] {
				t.Errorf("authentication failures moved by %d (two checks)", counted)
			}
			if audited := len(f.audit.all()) > audits; audited != tt.audited {
				t.Errorf("audited: %v, want %v (%v)", audited, tt.audited, f.audit.all())
			}
		})
	}
	// A peer without a certificate completes the handshake: it may only Join.
	var revokedNone bool
	if err := f.s.verifyConnection(&revokedNone)(tls.ConnectionState{}); err != nil || revokedNone {
		t.Fatalf("peer without a certificate: %v", err)
	}
	if f.s.tlsConfig().ClientAuth != tls.RequestClientCert {
		t.Fatal("the handshake must ask for a client certificate")
	}
	_, err := f.s.authUnary(t.Context(), nil, &grpc.UnaryServerInfo{FullMethod: nodeapi.FullRenewMethod}, func(context.Context, any) (any, error) { return nil, nil })
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Renew without a certificate: %v", err)
	}
}
