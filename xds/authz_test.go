package xds

import (
	"slices"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	ads = &discovery.AggregatedDiscoveryService_ServiceDesc
	sds = &secretservice.SecretDiscoveryService_ServiceDesc
)

// asker is one way a node asks for resources of a type: a request on a
// new SotW or delta stream, or a fetch.
type asker struct {
	name string
	// ask sends one request for names of typeURL as node on a new call of
	// c, and returns the names served, or the error that refused it.
	ask func(f *fixture, c *conn, node *core.Node, typeURL string, names []string) ([]string, error)
}

func sotwAsker(name string, desc *grpc.ServiceDesc, method string) asker {
	return asker{name, func(f *fixture, c *conn, node *core.Node, t string, names []string) ([]string, error) {
		cl := f.open(c, desc, method, f.xds)
		cl.offer(&discovery.DiscoveryRequest{Node: node, TypeUrl: t, ResourceNames: names})
		m, err := cl.answer()
		if err != nil {
			return nil, err
		}
		return namesOf(f.t, m), nil
	}}
}

func deltaAsker(name string, desc *grpc.ServiceDesc, method string) asker {
	return asker{name, func(f *fixture, c *conn, node *core.Node, t string, names []string) ([]string, error) {
		cl := f.open(c, desc, method, f.xds)
		cl.offer(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: t, ResourceNamesSubscribe: names})
		m, err := cl.answer()
		if err != nil {
			return nil, err
		}
		return namesOf(f.t, m), nil
	}}
}

func fetchAsker(name string, desc *grpc.ServiceDesc, method string) asker {
	return asker{name, func(f *fixture, c *conn, node *core.Node, t string, names []string) ([]string, error) {
		resp, err := f.fetch(c.ctx, desc, method, &discovery.DiscoveryRequest{Node: node, TypeUrl: t, ResourceNames: names})
		if err != nil {
			return nil, err
		}
		return namesOf(f.t, resp), nil
	}}
}

// secretAskers are every way to ask for secrets.
var secretAskers = []asker{
	sotwAsker("SotW ADS", ads, "StreamAggregatedResources"),
	sotwAsker("SotW SDS", sds, "StreamSecrets"),
	deltaAsker("delta ADS", ads, "DeltaAggregatedResources"),
	deltaAsker("delta SDS", sds, "DeltaSecrets"),
	fetchAsker("fetch SDS", sds, "FetchSecrets"),
}

// secretAskersUntyped send no type_url, which the per-type services fill
// in: an SDS request without one must be checked as a secret request.
var secretAskersUntyped = []asker{
	untyped(sotwAsker("SotW SDS without type_url", sds, "StreamSecrets")),
	untyped(deltaAsker("delta SDS without type_url", sds, "DeltaSecrets")),
}

// untyped sends a's requests without a type_url.
func untyped(a asker) asker {
	ask := a.ask
	a.ask = func(f *fixture, c *conn, node *core.Node, _ string, names []string) ([]string, error) {
		return ask(f, c, node, "", names)
	}
	return a
}

func nodeID(id string) *core.Node { return &core.Node{Id: id, Cluster: "mesh"} }

// meshOfTwo gives web and db their own identities; web also lost "old"
// (unassigned) and holds the withdrawn "revoked".
func meshOfTwo(f *fixture) {
	f.give("web", nodeConfig{identities: []string{"web", "old"}})
	f.give("web", nodeConfig{identities: []string{"web"}, withdrawn: []string{secretOf("revoked")}})
	f.give("db", nodeConfig{identities: []string{"db"}})
}

// TestSecretPermissions asks for secret names in every way a node can:
// its own identities and the bundle are served; another node's identity,
// or a name assigned to nobody, refuses the whole request (counted and
// audited); names the node lost are tolerated but not served; a wildcard
// serves only the node's own secrets.
func TestSecretPermissions(t *testing.T) {
	own, bundle := secretOf("web"), bundleName
	tests := []struct {
		name  string
		names []string
		want  []string // served; nil with refuse
		// refuse names the secret the refusal is about.
		refuse string
	}{
		{name: "own identity", names: []string{own}, want: []string{own}},
		{name: "trust bundle", names: []string{bundle}, want: []string{bundle}},
		{name: "own identity and bundle", names: []string{bundle, own}, want: []string{bundle, own}},
		{name: "another node's identity", names: []string{secretOf("db")}, refuse: secretOf("db")},
		{name: "own and another node's identity", names: []string{own, secretOf("db")}, refuse: secretOf("db")},
		{name: "assigned to no node", names: []string{own, secretOf("nobody")}, refuse: secretOf("nobody")},
		{name: "wildcard with another node's identity", names: []string{"*", secretOf("db")}, refuse: secretOf("db")},
		{name: "prefix of an own name", names: []string{own[:len(own)-1]}, refuse: own[:len(own)-1]},
		{name: "withdrawn name", names: []string{own, secretOf("revoked")}, want: []string{own}},
		{name: "name lost since the last snapshot", names: []string{own, secretOf("old")}, want: []string{own}},
		{name: "explicit wildcard", names: []string{"*"}, want: []string{bundle, own}},
		{name: "no names (wildcard)", names: nil, want: []string{bundle, own}},
	}
	for _, a := range append(slices.Clone(secretAskers), secretAskersUntyped...) {
		t.Run(a.name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					f := newFixture(t)
					meshOfTwo(f)
					c := f.nodeConn("web")
					got, err := a.ask(f, c, nodeID("web"), resource.SecretType, tt.names)
					denied := f.s.Stats().Denied
					if tt.refuse != "" {
						if status.Code(err) != codes.PermissionDenied || got != nil {
							t.Fatalf("served %v, err %v; want PermissionDenied", got, err)
						}
						if !strings.Contains(status.Convert(err).Message(), tt.refuse) {
							t.Errorf("refusal %q does not name %q", status.Convert(err).Message(), tt.refuse)
						}
						if denied != 1 {
							t.Errorf("denied counter = %d, want 1", denied)
						}
						if n := f.denialsLike(ActionRequest, "web", tt.refuse); n != 1 {
							t.Errorf("%d audit records naming %q, want 1: %v", n, tt.refuse, f.audit.all())
						}
						return
					}
					want := tt.want
					if a.name == "fetch SDS" && slices.Contains(tt.names, "*") {
						// go-control-plane's Fetch matches names
						// literally: "*" is allowed and matches nothing.
						want = nil
					}
					if err != nil || !slices.Equal(got, want) {
						t.Fatalf("served %v, err %v; want %v", got, err, want)
					}
					if denied != 0 || len(f.audit.all()) != 0 {
						t.Fatalf("allowed request counted (%d) or audited (%v) as denied", denied, f.audit.all())
					}
				})
			}
		})
	}
}

// TestDeltaSecretPermissionsLaterRequests: on a delta stream every request
// is checked, not only the first: names subscribed later, and names a
// reconnecting client says it already holds (initial_resource_versions).
func TestDeltaSecretPermissionsLaterRequests(t *testing.T) {
	for _, svc := range []struct {
		name, method, typeURL string
		desc                  *grpc.ServiceDesc
	}{
		{"delta ADS", "DeltaAggregatedResources", resource.SecretType, ads},
		{"delta SDS", "DeltaSecrets", "", sds},
	} {
		t.Run(svc.name, func(t *testing.T) {
			t.Run("subscribed in a later request", func(t *testing.T) {
				f := newFixture(t)
				meshOfTwo(f)
				cl := f.open(f.nodeConn("web"), svc.desc, svc.method, f.xds)
				cl.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("web"), TypeUrl: svc.typeURL, ResourceNamesSubscribe: []string{secretOf("web")}})
				first := cl.next().(*discovery.DeltaDiscoveryResponse)
				if got := namesOf(t, first); !slices.Equal(got, []string{secretOf("web")}) {
					t.Fatalf("first answer %v", got)
				}
				// Later requests may leave the node out: the stream's node.
				cl.send(&discovery.DeltaDiscoveryRequest{TypeUrl: svc.typeURL, ResponseNonce: first.GetNonce(), ResourceNamesSubscribe: []string{bundleName}})
				if got := namesOf(t, cl.next()); !slices.Equal(got, []string{bundleName}) {
					t.Fatalf("second answer %v", got)
				}
				cl.send(&discovery.DeltaDiscoveryRequest{TypeUrl: svc.typeURL, ResourceNamesSubscribe: []string{secretOf("db")}})
				if err := cl.wait(); status.Code(err) != codes.PermissionDenied {
					t.Fatalf("stream ended with %v, want PermissionDenied", err)
				}
				cl.sentNothing()
				if f.s.Stats().Denied != 1 || f.denialsLike(ActionRequest, "web", secretOf("db")) != 1 {
					t.Fatalf("refusal not counted (%d) or audited: %v", f.s.Stats().Denied, f.audit.all())
				}
			})
			t.Run("initial resource versions", func(t *testing.T) {
				f := newFixture(t)
				meshOfTwo(f)
				cl := f.open(f.nodeConn("web"), svc.desc, svc.method, f.xds)
				cl.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("web"), TypeUrl: svc.typeURL,
					ResourceNamesSubscribe:  []string{secretOf("web")},
					InitialResourceVersions: map[string]string{secretOf("db"): "1"}})
				if m, err := cl.answer(); status.Code(err) != codes.PermissionDenied {
					t.Fatalf("answered %v, err %v; want PermissionDenied", m, err)
				}
				if f.denialsLike(ActionRequest, "web", secretOf("db")) != 1 {
					t.Fatalf("refusal not audited: %v", f.audit.all())
				}
			})
			t.Run("unsubscribing is not a request", func(t *testing.T) {
				f := newFixture(t)
				meshOfTwo(f)
				cl := f.open(f.nodeConn("web"), svc.desc, svc.method, f.xds)
				cl.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("web"), TypeUrl: svc.typeURL,
					ResourceNamesSubscribe: []string{secretOf("web")}, ResourceNamesUnsubscribe: []string{secretOf("db")}})
				if got := namesOf(t, cl.next()); !slices.Equal(got, []string{secretOf("web")}) {
					t.Fatalf("answer %v", got)
				}
			})
		})
	}
}

// TestADSWithoutTypeURL: ADS needs a type_url. Without one no name is
// checked as a secret's, so the request must be refused before anything
// is served; the per-type services take their own type (see
// TestSecretPermissions).
func TestADSWithoutTypeURL(t *testing.T) {
	for _, delta := range []bool{false, true} {
		name := map[bool]string{false: "SotW", true: "delta"}[delta]
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			meshOfTwo(f)
			c := f.nodeConn("web")
			var cl *call
			if delta {
				cl = f.open(c, ads, "DeltaAggregatedResources", f.xds)
				cl.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("web"), ResourceNamesSubscribe: []string{secretOf("db")}})
			} else {
				cl = f.open(c, ads, "StreamAggregatedResources", f.xds)
				cl.send(&discovery.DiscoveryRequest{Node: nodeID("web"), ResourceNames: []string{secretOf("db")}})
			}
			if err := cl.wait(); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("stream ended with %v, want InvalidArgument", err)
			}
			cl.sentNothing()
		})
	}
}

// TestNonSecretTypes: listeners, routes, clusters and endpoints come from
// the node's own snapshot only. Naming another node's resource is not an
// error (Envoy may ask for what a stale listener references) but serves
// nothing of it; a wildcard serves the node's own.
func TestNonSecretTypes(t *testing.T) {
	types := []struct {
		typeURL    string
		sotw, dlt  asker
		fetch      asker
		own, other string
	}{
		{resource.ListenerType, sotwAsker("SotW LDS", &listenerservice.ListenerDiscoveryService_ServiceDesc, "StreamListeners"),
			deltaAsker("delta LDS", &listenerservice.ListenerDiscoveryService_ServiceDesc, "DeltaListeners"),
			fetchAsker("fetch LDS", &listenerservice.ListenerDiscoveryService_ServiceDesc, "FetchListeners"), "web-listener", "db-listener"},
		{resource.RouteType, sotwAsker("SotW RDS", &routeservice.RouteDiscoveryService_ServiceDesc, "StreamRoutes"),
			deltaAsker("delta RDS", &routeservice.RouteDiscoveryService_ServiceDesc, "DeltaRoutes"),
			fetchAsker("fetch RDS", &routeservice.RouteDiscoveryService_ServiceDesc, "FetchRoutes"), "web-route", "db-route"},
		{resource.ClusterType, sotwAsker("SotW CDS", &clusterservice.ClusterDiscoveryService_ServiceDesc, "StreamClusters"),
			deltaAsker("delta CDS", &clusterservice.ClusterDiscoveryService_ServiceDesc, "DeltaClusters"),
			fetchAsker("fetch CDS", &clusterservice.ClusterDiscoveryService_ServiceDesc, "FetchClusters"), "web-cluster", "db-cluster"},
		{resource.EndpointType, sotwAsker("SotW EDS", &endpointservice.EndpointDiscoveryService_ServiceDesc, "StreamEndpoints"),
			deltaAsker("delta EDS", &endpointservice.EndpointDiscoveryService_ServiceDesc, "DeltaEndpoints"),
			fetchAsker("fetch EDS", &endpointservice.EndpointDiscoveryService_ServiceDesc, "FetchEndpoints"), "web-cluster", "db-cluster"},
	}
	for _, ty := range types {
		askers := []asker{ty.sotw, ty.dlt, ty.fetch,
			sotwAsker("SotW ADS", ads, "StreamAggregatedResources"), deltaAsker("delta ADS", ads, "DeltaAggregatedResources")}
		for _, a := range askers {
			t.Run(ty.typeURL[strings.LastIndex(ty.typeURL, ".")+1:]+"/"+a.name, func(t *testing.T) {
				f := newFixture(t)
				give := func(node string) {
					n := node + "-"
					f.give(node, nodeConfig{identities: []string{node}, listeners: []string{n + "listener"}, routes: []string{n + "route"},
						clusters: []string{n + "cluster"}, endpoints: []string{n + "cluster"}})
				}
				give("web")
				give("db")
				c := f.nodeConn("web")
				got, err := a.ask(f, c, nodeID("web"), ty.typeURL, []string{ty.own, ty.other})
				if err != nil || !slices.Equal(got, []string{ty.own}) {
					t.Fatalf("named own and other: served %v, err %v; want [%s]", got, err, ty.own)
				}
				got, err = a.ask(f, c, nodeID("web"), ty.typeURL, nil)
				if err != nil || !slices.Equal(got, []string{ty.own}) {
					t.Fatalf("wildcard: served %v, err %v; want [%s]", got, err, ty.own)
				}
				if f.s.Stats().Denied != 0 {
					t.Fatal("a request for another node's resource name was counted as denied")
				}
				// node.id is checked for every type.
				if _, err := a.ask(f, c, nodeID("db"), ty.typeURL, nil); status.Code(err) != codes.PermissionDenied {
					t.Fatalf("node.id of db on web's connection: %v, want PermissionDenied", err)
				}
			})
		}
	}
}

// TestSecretUnderAnotherTypeURL: authorize checks names only under the
// exact secret type URL, which is sound only if nothing else reaches
// secrets: a secret named under another type is unchecked and serves
// nothing, and no other spelling of the type finds secrets in a snapshot.
func TestSecretUnderAnotherTypeURL(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	got, err := sotwAsker("SotW ADS", ads, "StreamAggregatedResources").ask(f, f.nodeConn("web"), nodeID("web"), resource.ListenerType, []string{secretOf("web"), secretOf("db")})
	if err != nil || len(got) != 0 {
		t.Fatalf("secrets named as listeners: served %v, err %v; want nothing", got, err)
	}
	snap, err := f.snapshot("web")
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.GetResources(resource.SecretType)) == 0 {
		t.Fatal("control: web's snapshot holds no secrets")
	}
	for _, typeURL := range []string{"type.googleapis.com/envoy.api.v2.auth.Secret", resource.SecretType + " ", strings.ToUpper(resource.SecretType), "envoy.extensions.transport_sockets.tls.v3.Secret"} {
		if n := len(snap.GetResources(typeURL)); n != 0 {
			t.Errorf("type %q finds %d secrets", typeURL, n)
		}
	}
}
