package bootstrap_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/xds"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
)

var update = flag.Bool("update", false, "rewrite golden files")

const goldenDir = "../../testdata/bootstrap"

func goldenParams() bootstrap.Params {
	return bootstrap.Params{
		Node:        "edge-1",
		TrustDomain: "mesh.local",
		Server:      "meshca.internal:6565",
		Dir:         "/etc/meshca/node",
	}
}

func TestGolden(t *testing.T) {
	p := goldenParams()
	tests := []struct {
		file   string
		render func(bootstrap.Params) ([]byte, error)
	}{
		{bootstrap.EnvoyFile, bootstrap.Envoy},
		{bootstrap.CertSDSFile, bootstrap.CertSDS},
		{bootstrap.BundleSDSFile, bootstrap.BundleSDS},
		{bootstrap.GRPCFile, bootstrap.GRPC},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := tt.render(p)
			if err != nil {
				t.Fatal(err)
			}
			again, err := tt.render(p)
			if err != nil || !bytes.Equal(got, again) {
				t.Fatalf("output is not stable across calls (err %v)", err)
			}
			path := filepath.Join(goldenDir, tt.file)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (run go test -update if the change is intended)\n--- got\n%s", tt.file, path, got)
			}
		})
	}
}

func TestParseEnvoyAcceptsGenerated(t *testing.T) {
	p := goldenParams()
	p.AdminPort = 19000
	p.Cluster = "front-proxy"
	y, err := bootstrap.Envoy(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoycheck.ParseEnvoy(y)
	if err != nil {
		t.Fatalf("ParseEnvoy(generated) = %v", err)
	}
	if got := b.GetNode().GetId(); got != "edge-1" {
		t.Errorf("node.id = %q", got)
	}
	if got := b.GetNode().GetCluster(); got != "front-proxy" {
		t.Errorf("node.cluster = %q", got)
	}
	if got := b.GetAdmin().GetAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != 19000 {
		t.Errorf("admin address = %v", got)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "meshca_xds" || !ads.GetSetNodeOnFirstMessageOnly() {
		t.Errorf("ads_config = %v", ads)
	}
	if b.GetDynamicResources().GetLdsConfig().GetAds() == nil || b.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Error("lds_config/cds_config are not ADS")
	}
	clusters := b.GetStaticResources().GetClusters()
	if len(clusters) != 1 || clusters[0].GetName() != "meshca_xds" {
		t.Fatalf("static clusters = %v", clusters)
	}
	c := clusters[0]
	if c.GetConnectTimeout().AsDuration() != 5*time.Second {
		t.Errorf("connect_timeout = %v", c.GetConnectTimeout())
	}
	sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if sa.GetAddress() != "meshca.internal" || sa.GetPortValue() != 6565 {
		t.Errorf("meshca endpoint = %v", sa)
	}
	opts := new(httpv3.HttpProtocolOptions)
	if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(opts); err != nil {
		t.Fatal(err)
	}
	ka := opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive()
	if ka.GetInterval().AsDuration() != 30*time.Second || ka.GetTimeout().AsDuration() != 10*time.Second {
		t.Errorf("keepalive = %v", ka)
	}
	if c.GetTransportSocket().GetName() != "envoy.transport_sockets.tls" {
		t.Errorf("transport socket = %q", c.GetTransportSocket().GetName())
	}
	up := new(tlsv3.UpstreamTlsContext)
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(up); err != nil {
		t.Fatal(err)
	}
	ctx := up.GetCommonTlsContext()
	if ctx.GetTlsParams().GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 {
		t.Errorf("tls_minimum_protocol_version = %v", ctx.GetTlsParams().GetTlsMinimumProtocolVersion())
	}
	cert := ctx.GetTlsCertificateSdsSecretConfigs()[0]
	if cert.GetName() != bootstrap.NodeSecretName ||
		cert.GetSdsConfig().GetPathConfigSource().GetPath() != "/etc/meshca/node/node-sds.yaml" ||
		cert.GetSdsConfig().GetPathConfigSource().GetWatchedDirectory().GetPath() != "/etc/meshca/node" {
		t.Errorf("certificate SDS config = %v", cert)
	}
	cvc := ctx.GetCombinedValidationContext()
	san := cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(san) != 1 || san[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI || san[0].GetMatcher().GetExact() != "spiffe://mesh.local/meshca" {
		t.Errorf("SAN matchers = %v", san)
	}
	vsds := cvc.GetValidationContextSdsSecretConfig()
	if vsds.GetName() != bootstrap.BundleSecretName || vsds.GetSdsConfig().GetPathConfigSource().GetPath() != "/etc/meshca/node/bundle-sds.yaml" {
		t.Errorf("bundle SDS config = %v", vsds)
	}
}

// TestParseEnvoyRefusesDeepErrors swaps typed_configs for invalid ones that
// the top-level ValidateAll cannot see.
func TestParseEnvoyRefusesDeepErrors(t *testing.T) {
	y, err := bootstrap.Envoy(goldenParams())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		old     string
		new     string
		wantErr []string
	}{
		{
			name: "UpstreamTlsContext with a 300-character SNI",
			old:  "        common_tls_context:\n",
			new:  "        sni: " + strings.Repeat("a", 300) + "\n        common_tls_context:\n",
			wantErr: []string{
				"static_resources.clusters[0].transport_socket.typed_config (envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext)",
				"Sni",
			},
		},
		{
			name: "HttpProtocolOptions without a protocol",
			old:  "        explicit_http_config:\n          http2_protocol_options:\n            connection_keepalive: {interval: 30s, timeout: 10s}\n",
			new:  "",
			wantErr: []string{
				`static_resources.clusters[0].typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`,
				"UpstreamProtocolOptions: value is required",
			},
		},
		{
			name:    "unregistered typed_config",
			old:     "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
			new:     "type.googleapis.com/example.NotLinked",
			wantErr: []string{"example.NotLinked"},
		},
		{
			name:    "misspelled field",
			old:     "watched_directory",
			new:     "watch_directory",
			wantErr: []string{"watch_directory"},
		},
		{
			name:    "not YAML",
			old:     "node:\n",
			new:     "node: [\n",
			wantErr: []string{"yaml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !bytes.Contains(y, []byte(tt.old)) {
				t.Fatalf("envoy.yaml has no %q to replace", tt.old)
			}
			broken := bytes.Replace(y, []byte(tt.old), []byte(tt.new), 1)
			_, err := envoycheck.ParseEnvoy(broken)
			if err == nil {
				t.Fatalf("ParseEnvoy accepted:\n%s", broken)
			}
			if !errors.Is(err, envoycheck.ErrInvalidConfig) {
				t.Errorf("error %v is not ErrInvalidConfig", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestParseSDS(t *testing.T) {
	p := goldenParams()
	cert, err := bootstrap.CertSDS(p)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := bootstrap.BundleSDS(p)
	if err != nil {
		t.Fatal(err)
	}

	s, err := envoycheck.ParseSDS(cert)
	if err != nil {
		t.Fatalf("ParseSDS(%s) = %v", bootstrap.CertSDSFile, err)
	}
	if len(s) != 1 || s[0].GetName() != bootstrap.NodeSecretName ||
		s[0].GetTlsCertificate().GetCertificateChain().GetFilename() != "/etc/meshca/node/node.pem" ||
		s[0].GetTlsCertificate().GetPrivateKey().GetFilename() != "/etc/meshca/node/node-key.pem" {
		t.Errorf("node secret = %v", s)
	}
	s, err = envoycheck.ParseSDS(bundle)
	if err != nil {
		t.Fatalf("ParseSDS(%s) = %v", bootstrap.BundleSDSFile, err)
	}
	if len(s) != 1 || s[0].GetName() != bootstrap.BundleSecretName ||
		// meshca is verified against its issuing CAs, not the shared roots.
		s[0].GetValidationContext().GetTrustedCa().GetFilename() != "/etc/meshca/node/meshca-issuers.pem" {
		t.Errorf("bundle secret = %v", s)
	}

	const secretType = `"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret`
	tests := []struct {
		name, yaml, want string
	}{
		{"empty tls_certificate", "resources:\n- " + secretType + "\n  name: x\n  tls_certificate: {}\n", "certificate_chain is not set"},
		{"no private key", "resources:\n- " + secretType + "\n  name: x\n  tls_certificate: {certificate_chain: {filename: /a}}\n", "private_key is not set"},
		{"empty validation_context", "resources:\n- " + secretType + "\n  name: x\n  validation_context: {}\n", "trusted_ca is not set"},
		{"no name", "resources:\n- " + secretType + "\n  validation_context: {trusted_ca: {filename: /a}}\n", "name is empty"},
		{"no type", "resources:\n- " + secretType + "\n  name: x\n", "no type"},
		{"no resources", "resources: []\n", "no resources"},
		{"not a Secret", "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n", "is not a Secret"},
		{"PGV rule inside the secret", "resources:\n- " + secretType + "\n  name: x\n  tls_certificate: {certificate_chain: {filename: \"\"}, private_key: {filename: /k}}\n", "Filename"},
		{"unknown field", "resources:\n- " + secretType + "\n  name: x\n  tls_certificat: {}\n", "tls_certificat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := envoycheck.ParseSDS([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("ParseSDS accepted:\n%s", tt.yaml)
			}
			if !errors.Is(err, envoycheck.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseSDS error = %q, want ErrInvalidConfig containing %q", err, tt.want)
			}
		})
	}
}

// writeNodeFiles puts a real self-signed certificate, key and bundle in dir,
// in case grpc-go reads them while building credentials.
func writeNodeFiles(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge-1"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for name, data := range map[string][]byte{
		bootstrap.CertFile:   certPEM,
		bootstrap.BundleFile: certPEM,
		bootstrap.KeyFile:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGRPCWithGRPCGoParser feeds grpc-bootstrap.json to grpc-go's own
// bootstrap parser, and checks that the parser does refuse broken variants.
func TestGRPCWithGRPCGoParser(t *testing.T) {
	dir := t.TempDir()
	writeNodeFiles(t, dir)
	p := goldenParams()
	p.Dir = dir
	p.Server = "127.0.0.1:6565"
	out, err := bootstrap.GRPC(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := grpcParse(t, out); err != nil {
		t.Fatalf("grpc-go refused grpc-bootstrap.json: %v\n%s", err, out)
	}

	var doc map[string]any
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if got := doc["server_listener_resource_name_template"]; got != "grpc/server?xds.resource.listening_address=%s" {
		t.Errorf("server_listener_resource_name_template = %v", got)
	}
	node := doc["node"].(map[string]any)
	if node["id"] != "edge-1" || node["cluster"] != "edge-1" {
		t.Errorf("node = %v (cluster must default to the node id)", node)
	}

	broken := []struct{ name, old, new string }{
		{"no xds_servers", `"xds_servers": [`, `"xds_servers": [], "unused": [`},
		{"unsupported channel creds only", `"type": "tls"`, `"type": "no-such-creds"`},
		{"bad refresh interval", `"refresh_interval": "60s"`, `"refresh_interval": "soon"`},
	}
	for _, tt := range broken {
		t.Run(tt.name, func(t *testing.T) {
			if !bytes.Contains(out, []byte(tt.old)) {
				t.Fatalf("grpc-bootstrap.json has no %q", tt.old)
			}
			b := bytes.Replace(out, []byte(tt.old), []byte(tt.new), 1)
			err := grpcParse(t, b)
			t.Logf("grpc-go: %v", err)
			if err == nil {
				t.Fatalf("grpc-go accepted a broken bootstrap:\n%s", b)
			}
		})
	}
}

func TestParamsErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*bootstrap.Params)
		field  string
	}{
		{"empty node", func(p *bootstrap.Params) { p.Node = "" }, "Node"},
		{"empty trust domain", func(p *bootstrap.Params) { p.TrustDomain = "" }, "TrustDomain"},
		{"bad trust domain", func(p *bootstrap.Params) { p.TrustDomain = "Mesh Local" }, "TrustDomain"},
		{"empty server", func(p *bootstrap.Params) { p.Server = "" }, "Server"},
		{"server without port", func(p *bootstrap.Params) { p.Server = "meshca.internal" }, "Server"},
		{"server with port 0", func(p *bootstrap.Params) { p.Server = "meshca.internal:0" }, "Server"},
		{"server with named port", func(p *bootstrap.Params) { p.Server = "meshca.internal:xds" }, "Server"},
		{"server without host", func(p *bootstrap.Params) { p.Server = ":6565" }, "Server"},
		{"empty dir", func(p *bootstrap.Params) { p.Dir = "" }, "Dir"},
		{"relative dir", func(p *bootstrap.Params) { p.Dir = "etc/meshca" }, "Dir"},
		{"admin port too large", func(p *bootstrap.Params) { p.AdminPort = 70000 }, "AdminPort"},
	}
	renderers := map[string]func(bootstrap.Params) ([]byte, error){
		"Envoy": bootstrap.Envoy, "CertSDS": bootstrap.CertSDS, "BundleSDS": bootstrap.BundleSDS, "GRPC": bootstrap.GRPC,
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := goldenParams()
			tt.mutate(&p)
			for rname, render := range renderers {
				_, err := render(p)
				if err == nil {
					t.Fatalf("%s(%+v) = nil error", rname, p)
				}
				if !errors.Is(err, bootstrap.ErrInvalidParams) || !strings.Contains(err.Error(), tt.field) {
					t.Errorf("%s error = %q, want ErrInvalidParams naming %s", rname, err, tt.field)
				}
			}
		})
	}
}

// TestHostileValuesStayQuoted checks that values cannot inject YAML.
func TestHostileValuesStayQuoted(t *testing.T) {
	p := goldenParams()
	p.Node = "edge-1\n  cluster: evil\nadmin: {}"
	p.Dir = "/etc/meshca/a: b # c"
	y, err := bootstrap.Envoy(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoycheck.ParseEnvoy(y)
	if err != nil {
		t.Fatalf("ParseEnvoy = %v\n%s", err, y)
	}
	if b.GetNode().GetId() != p.Node || b.GetNode().GetCluster() != p.Node {
		t.Errorf("node = %v", b.GetNode())
	}
	s, err := bootstrap.CertSDS(p)
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := envoycheck.ParseSDS(s)
	if err != nil {
		t.Fatal(err)
	}
	if got := secrets[0].GetTlsCertificate().GetPrivateKey().GetFilename(); got != "/etc/meshca/a: b # c/node-key.pem" {
		t.Errorf("private_key.filename = %q", got)
	}
}

// fakeClientConn is the least a resolver.ClientConn needs to be.
type fakeClientConn struct{ resolver.ClientConn }

func (fakeClientConn) UpdateState(resolver.State) error { return nil }
func (fakeClientConn) ReportError(error)                {}
func (fakeClientConn) ParseServiceConfig(string) *serviceconfig.ParseResult {
	return &serviceconfig.ParseResult{}
}

// grpcParse runs grpc-go's own bootstrap parser. The builder from
// NewXDSResolverWithConfigForTesting parses lazily, when a resolver is
// built, so build one for xds:///echo and close it.
func grpcParse(t *testing.T, config []byte) error {
	t.Helper()
	rb, err := xds.NewXDSResolverWithConfigForTesting(config)
	if err != nil {
		return err
	}
	target := resolver.Target{URL: url.URL{Scheme: "xds", Path: "/echo"}}
	r, err := rb.Build(target, fakeClientConn{}, resolver.BuildOptions{})
	if err != nil {
		return err
	}
	r.Close()
	return nil
}
