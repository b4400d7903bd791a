package mesh_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/mesh"
)

const goodBase = `
version: 1
services:
  - name: echo-alpha
    identity: echo-alpha
    endpoints: [{address: 10.0.0.1, port: 8080}]
  - name: echo-beta
    endpoints: [{address: 10.0.0.2, port: 8080}]
routes:
  - name: echo
    domains: ["*"]
    rules:
      - weighted: [{service: echo-alpha, weight: 1}, {service: echo-beta, weight: 0}]
front_proxy:
  identity: front
  https: {route: echo, client_certs: required, allowed_spiffe_ids: [{exact: spiffe://mesh.local/ops}]}
  http: {redirect_to_https: permanent_redirect}
`

func TestParseRefusesBadFiles(t *testing.T) {
	if _, err := mesh.Parse([]byte(goodBase), td); err != nil {
		t.Fatalf("the base file must parse: %v", err)
	}
	tests := []struct {
		name     string
		old, new string // replacement applied to goodBase
		wantPath string
		wantMsg  string
	}{
		{"unknown service in a route", "service: echo-beta, weight: 0", "service: echo-gamma, weight: 0",
			"routes[0].rules[0].weighted[1].service", `unknown service "echo-gamma"`},
		{"weights sum to 0", "weight: 1}", "weight: 0}", "routes[0].rules[0].weighted", "add up to 0"},
		{"missing weight", "service: echo-beta, weight: 0", "service: echo-beta", "routes[0].rules[0].weighted[1].weight", "is required"},
		{"duplicate service names", "name: echo-beta", "name: echo-alpha", "services[1].name", "defined twice"},
		{"bad address", "10.0.0.1", "10.0.0", "services[0].endpoints[0].address", `"10.0.0" is not an IP address or host name`},
		{"unknown key", "identity: echo-alpha", "identiy: echo-alpha", "services[0].identiy", "unknown key"},
		{"bad port", "port: 8080}]\n  - name: echo-beta", "port: 70000}]\n  - name: echo-beta", "services[0].endpoints[0].port", "70000 is not a port"},
		{"bad SPIFFE ID in allowed_spiffe_ids", "exact: spiffe://mesh.local/ops", "exact: spiffe://Mesh.local/ops",
			"front_proxy.https.allowed_spiffe_ids[0].exact", "spiffe://Mesh.local/ops"},
		{"foreign trust domain", "exact: spiffe://mesh.local/ops", "exact: spiffe://other.org/ops",
			"front_proxy.https.allowed_spiffe_ids[0].exact", "another trust domain"},
		{"bad prefix", "exact: spiffe://mesh.local/ops", "prefix: spiffe://other.org/",
			"front_proxy.https.allowed_spiffe_ids[0].prefix", "must start with spiffe://mesh.local/"},
		{"route without domains", `domains: ["*"]`, "domains: []", "routes[0].domains", "at least one domain"},
		{"bad identity", "identity: echo-alpha", "identity: node/x", "services[0].identity", "reserved"},
		{"bad duration", "weight: 0}]", "weight: 0}]\n        timeout: 5 seconds", "routes[0].rules[0].timeout", "not a duration"},
		{"bad header name", "weight: 0}]", "weight: 0}]\n        match: {headers: [{name: X Canary, exact: a}]}", "routes[0].rules[0].match.headers[0].name", "not a header name"},
		{"bad formatter", "domains: [\"*\"]", "domains: [\"*\"]\n    response_headers: [{name: x-up, value: \"%NOPE%\"}]", "routes[0].response_headers[0].value", "not a supported formatter"},
		{"wrong type", "port: 8080}]\n  - name: echo-beta", "port: eighty}]\n  - name: echo-beta", "services[0].endpoints[0].port", "want an integer"},
		{"redirect without https", "  https: {route: echo, client_certs: required, allowed_spiffe_ids: [{exact: spiffe://mesh.local/ops}]}\n", "",
			"front_proxy.http.redirect_to_https", "no https listener"},
		{"unknown route", "https: {route: echo,", "https: {route: eco,", "front_proxy.https.route", `unknown route "eco"`},
		{"repeated key", "identity: front\n", "identity: front\n  identity: front\n", "front_proxy.identity", "twice"},
		{"hsts with plain http", "http: {redirect_to_https: permanent_redirect}", "http: {route: echo}",
			"", ""}, // valid: no hsts here; see the next case
		{"hsts with plain route", "https: {route: echo, client_certs: required, allowed_spiffe_ids: [{exact: spiffe://mesh.local/ops}]}\n  http: {redirect_to_https: permanent_redirect}",
			"https: {route: echo, hsts: {max_age: 60}}\n  http: {route: echo}", "front_proxy.https.hsts", "HSTS enforces HTTPS"},
		{"grpc to a sidecar service", "front_proxy:", "sidecars: [{service: echo-alpha, app_port: 8080}]\ngrpc: [{name: echo-alpha}]\nfront_proxy:",
			"grpc[0]", "has a sidecar"},
		{"grpc with IP endpoints", "front_proxy:", "grpc: [{name: echo-beta}]\nfront_proxy:", "", ""},
		{"grpc with host name endpoints", "    endpoints: [{address: 10.0.0.2, port: 8080}]\n",
			"    endpoints: [{address: beta.internal, port: 8080}]\ngrpc: [{name: echo-beta}]\n", "grpc[0]", "need IP addresses"},
		{"alias", "domains: [\"*\"]", "domains: &d [\"*\"]", "routes[0].domains", "anchors and aliases"},
		{"two documents", "", "---\nservices: []\n", "", "only one YAML document"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := strings.Replace(goodBase, tt.old, tt.new, 1)
			if tt.old == "" {
				data = goodBase + tt.new
			}
			if data == goodBase {
				t.Fatalf("replacement %q did not apply", tt.old)
			}
			_, err := mesh.Parse([]byte(data), td)
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if !errors.Is(err, mesh.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			var ve *mesh.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err is %T, want *ValidationError", err)
			}
			for _, p := range ve.Problems {
				if p.Path == tt.wantPath && strings.Contains(p.Message, tt.wantMsg) {
					return
				}
			}
			t.Errorf("no problem at %q containing %q in:\n%v", tt.wantPath, tt.wantMsg, err)
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	data := `
version: 1
services:
  - name: echo
    endpoints:
      - {address: 10.0.0, port: 8080}
      - {address: 10.0.0.2, port: 70000}
routes:
  - name: web
    domains: []
    rules: [{service: nope}]
`
	_, err := mesh.Parse([]byte(data), td)
	var ve *mesh.ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, mesh.ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	var got []string
	for _, p := range ve.Problems {
		got = append(got, p.Path)
	}
	want := []string{
		"services[0].endpoints[0].address",
		"services[0].endpoints[1].port",
		"routes[0].domains",
		"routes[0].rules[0].service",
	}
	if !slices.Equal(got, want) {
		t.Errorf("problem paths %v, want %v\n%v", got, want, err)
	}
	if n := strings.Count(err.Error(), "\n"); n != 4 {
		t.Errorf("Error() has %d problem lines, want 4:\n%v", n, err)
	}
	// Decoding problems (unknown keys, wrong types) are all reported too,
	// with what validation finds in the rest (the misspelt name is missing),
	// and a path that failed to decode is not reported twice.
	_, err = mesh.Parse([]byte("version: 1\nservices:\n  - nam: a\n    endpoints: 3\nroute: []\n"), td)
	got = nil
	if errors.As(err, &ve) {
		for _, p := range ve.Problems {
			got = append(got, p.Path)
		}
	}
	if want := []string{"services[0].nam", "services[0].endpoints", "route", "services[0].name"}; !slices.Equal(got, want) {
		t.Errorf("problem paths %v, want %v", got, want)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(goodBase))
	f.Add([]byte("services: [{name: a, endpoints: [{address: '::1', port: 1, weight: 3}]}]\ngrpc: [{name: a}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := mesh.Parse(data, td)
		if err != nil {
			if !errors.Is(err, mesh.ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// A valid mesh round-trips and builds for every node kind without
		// a validation failure of its own output.
		out, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := mesh.Parse(out, td); err != nil {
			t.Fatalf("canonical form does not parse: %v\n%s", err, out)
		}
		for _, n := range []mesh.Node{frontNode, grpcNode} {
			if _, err := mesh.Build(m, n, td); errors.Is(err, mesh.ErrInvalidResource) {
				t.Fatalf("Build(%s) generated an invalid resource: %v", n.Kind, err)
			}
		}
	})
}
