package mesh_test

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/mesh"
)

// sparse is a mesh that leaves out every value with a default. Each call
// returns a fresh copy.
func sparse() *mesh.Mesh {
	return &mesh.Mesh{
		Services: []mesh.Service{{
			Name: "echo", Identity: "echo",
			Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 8080, Locality: &mesh.Locality{}}},
		}},
		Routes: []mesh.Route{{Name: "web", Domains: []string{"*"}, Rules: []mesh.Rule{
			{Service: "echo", Retries: &mesh.Retries{NumRetries: 2}},
		}}},
		FrontProxy: &mesh.FrontProxy{
			Identity: "edge",
			HTTPS:    &mesh.HTTPSListener{Route: "web"},
			HTTP:     &mesh.HTTPListener{RedirectToHTTPS: mesh.RedirectPermanent},
		},
		Sidecars: []mesh.Sidecar{{Service: "echo", AppPort: 8080}},
	}
}

func TestDefaultsFillEveryDefault(t *testing.T) {
	m := sparse()
	mesh.Defaults(m)
	tests := []struct {
		name      string
		got, want any
	}{
		{"version", m.Version, mesh.FormatVersion},
		{"protocol", m.Services[0].Protocol, mesh.ProtocolHTTP},
		{"endpoint weight", *m.Services[0].Endpoints[0].Weight, 1},
		{"empty locality", m.Services[0].Endpoints[0].Locality, (*mesh.Locality)(nil)},
		{"match", m.Routes[0].Rules[0].Match.Prefix, "/"},
		{"retry conditions", m.Routes[0].Rules[0].Retries.On, []string{"5xx", "connect-failure", "unavailable"}},
		{"https port", m.FrontProxy.HTTPS.Port, mesh.DefaultHTTPSPort},
		{"client certs", m.FrontProxy.HTTPS.ClientCerts, mesh.ClientCertsNone},
		{"http port", m.FrontProxy.HTTP.Port, mesh.DefaultHTTPPort},
		{"inbound port", m.Sidecars[0].InboundPort, mesh.DefaultInboundPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Fatalf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
	again := sparse()
	mesh.Defaults(again)
	mesh.Defaults(again)
	if !reflect.DeepEqual(m, again) {
		t.Fatal("Defaults is not idempotent")
	}
	// Given values are kept.
	given := sparse()
	given.Services[0].Protocol = mesh.ProtocolHTTP2
	given.Sidecars[0].InboundPort = 15000
	mesh.Defaults(given)
	if given.Services[0].Protocol != mesh.ProtocolHTTP2 || given.Sidecars[0].InboundPort != 15000 {
		t.Fatalf("Defaults replaced given values: %+v %+v", given.Services[0], given.Sidecars[0])
	}
}

// Validate checks and never changes its Mesh: with Defaults first the
// sparse mesh is valid; without, each value left out is a problem.
func TestValidateDoesNotChangeTheMesh(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")

	m := sparse()
	mesh.Defaults(m)
	defaulted := sparse()
	mesh.Defaults(defaulted)
	if err := m.Validate(td); err != nil {
		t.Fatalf("defaulted mesh: %v", err)
	}
	if !reflect.DeepEqual(m, defaulted) {
		t.Fatal("Validate changed a valid mesh")
	}

	m = sparse()
	err := m.Validate(td)
	if !reflect.DeepEqual(m, sparse()) {
		t.Fatal("Validate changed a mesh without defaults")
	}
	var ve *mesh.ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, mesh.ErrInvalid) {
		t.Fatalf("mesh without defaults: %v, want a *ValidationError", err)
	}
	var paths []string
	for _, p := range ve.Problems {
		paths = append(paths, p.Path)
	}
	for _, want := range []string{"version", "services[0].protocol", "services[0].endpoints[0].weight",
		"routes[0].rules[0].match", "front_proxy.https.port", "front_proxy.https.client_certs",
		"front_proxy.http.port", "sidecars[0].inbound_port"} {
		if !slices.Contains(paths, want) {
			t.Errorf("no problem at %s; problems: %v", want, paths)
		}
	}
}
