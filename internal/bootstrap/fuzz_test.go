package bootstrap_test

import (
	"errors"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/mesh"
)

// FuzzEnvoyBootstrap is the proof that the templates give Envoy valid
// config, which the node agent's binary no longer checks at run time.
// For any Params: either every renderer (grpc-bootstrap.json's too)
// refuses them with ErrInvalidParams and returns no bytes at all, or
// envoy.yaml and both SDS files pass
// Envoy's proto validation (envoycheck, into every typed_config) and say
// exactly what the Params said: node, cluster, admin port (which
// bootstrap.AdminPort reads back the same), every server once with
// Server first, the agent's SDS pipe, and the files' absolute paths.
func FuzzEnvoyBootstrap(f *testing.F) {
	f.Add("edge-1", "", "mesh.local", "meshca.internal:6565", "/etc/meshca/node", uint32(0), "", "")
	f.Add("edge-1", "front-proxy", "mesh.local", "meshca.internal:6565", "/etc/meshca/node", uint32(19000),
		"meshca-2.internal:6565 meshca.internal:6565 10.0.0.3:6566 meshca-2.internal:6565", "/run/meshca-agent/sds.sock")
	f.Add("edge-1\n  cluster: evil\nadmin: {}", "", "mesh.local", "[::1]:6565", "/etc/meshca/a: b # c", uint32(65535), "", "")
	f.Add("n", "", "Mesh Local", "meshca.internal", "etc/meshca", uint32(70000), ":5", "run/sds.sock")
	f.Add("n\x00", "\"c'", "example.org", "h\":1", "/d/./x/../y/", uint32(1), "a:1 a:01 [fe80::1%eth0]:2", "/s\\ock")
	f.Fuzz(func(t *testing.T, node, cluster, td, server, dir string, admin uint32, replicas, agentSDS string) {
		p := bootstrap.Params{Node: node, Cluster: cluster, TrustDomain: td, Server: server, Dir: dir, AdminPort: admin, AgentSDS: agentSDS}
		if replicas != "" {
			p.Replicas = strings.Split(replicas, " ")
		}
		y, err := bootstrap.Envoy(p)
		refusedBy := 0
		for name, render := range map[string]func(bootstrap.Params) ([]byte, error){
			"Envoy": bootstrap.Envoy, "CertSDS": bootstrap.CertSDS, "BundleSDS": bootstrap.BundleSDS, "GRPC": bootstrap.GRPC,
		} {
			out, rerr := render(p)
			if rerr == nil {
				continue
			}
			refusedBy++
			if !errors.Is(rerr, bootstrap.ErrInvalidParams) {
				t.Fatalf("%s: error %v is not ErrInvalidParams", name, rerr)
			}
			if out != nil {
				t.Fatalf("%s refused %+v (%v) but returned %d bytes", name, p, rerr, len(out))
			}
		}
		if err != nil {
			if refusedBy != 4 {
				t.Fatalf("Envoy refused %+v (%v) but %d of the 4 renderers did", p, err, refusedBy)
			}
			return
		}
		if refusedBy != 0 {
			t.Fatalf("Envoy rendered %+v but %d other renderers refused it", p, refusedBy)
		}

		b, err := envoycheck.ParseEnvoy(y)
		if err != nil {
			t.Fatalf("envoy.yaml of %+v does not pass Envoy's validation: %v\n%s", p, err, y)
		}
		wantCluster := p.Cluster
		if wantCluster == "" {
			wantCluster = p.Node
		}
		if b.GetNode().GetId() != p.Node || b.GetNode().GetCluster() != wantCluster {
			t.Fatalf("node %q/%q, want %q/%q", b.GetNode().GetId(), b.GetNode().GetCluster(), p.Node, wantCluster)
		}
		wantAdmin := p.AdminPort
		if wantAdmin == 0 {
			wantAdmin = bootstrap.DefaultAdminPort
		}
		if got := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); got != wantAdmin {
			t.Fatalf("admin port %d, want %d", got, wantAdmin)
		}
		if got, ok := bootstrap.AdminPort(y); !ok || got != wantAdmin {
			t.Fatalf("AdminPort = %d, %v; Envoy reads %d", got, ok, wantAdmin)
		}

		// Every server once, Server first, as Envoy resolves them.
		want := []string{p.Server}
		for _, r := range p.Replicas {
			if !slices.Contains(want, r) {
				want = append(want, r)
			}
		}
		var clusters []string
		var servers []string
		agentPipe := ""
		for _, c := range b.GetStaticResources().GetClusters() {
			clusters = append(clusters, c.GetName())
			for _, le := range c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints() {
				a := le.GetEndpoint().GetAddress()
				if pipe := a.GetPipe(); pipe != nil {
					agentPipe = pipe.GetPath()
					continue
				}
				sa := a.GetSocketAddress()
				servers = append(servers, net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)))
			}
		}
		if !sameServers(servers, want) {
			t.Fatalf("endpoints %v, want %v", servers, want)
		}
		wantClusters := []string{bootstrap.ClusterName}
		if p.AgentSDS != "" {
			wantClusters = append(wantClusters, mesh.AgentSDSCluster)
		}
		if !slices.Equal(clusters, wantClusters) || agentPipe != p.AgentSDS {
			t.Fatalf("static clusters %v (agent pipe %q), want %v (%q)", clusters, agentPipe, wantClusters, p.AgentSDS)
		}
		up := new(tlsv3.UpstreamTlsContext)
		if err := b.GetStaticResources().GetClusters()[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(up); err != nil {
			t.Fatal(err)
		}
		cleanDir := path.Clean(p.Dir)
		sds := up.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetSdsConfig().GetPathConfigSource()
		if sds.GetPath() != path.Join(cleanDir, bootstrap.CertSDSFile) || sds.GetWatchedDirectory().GetPath() != cleanDir {
			t.Fatalf("node SDS file %q watched in %q, want %s in %q", sds.GetPath(), sds.GetWatchedDirectory().GetPath(), bootstrap.CertSDSFile, cleanDir)
		}

		cert, err := bootstrap.CertSDS(p)
		if err != nil {
			t.Fatal(err)
		}
		s, err := envoycheck.ParseSDS(cert)
		if err != nil {
			t.Fatalf("%s of %+v does not pass Envoy's validation: %v\n%s", bootstrap.CertSDSFile, p, err, cert)
		}
		if tc := s[0].GetTlsCertificate(); tc.GetCertificateChain().GetFilename() != path.Join(cleanDir, bootstrap.CertFile) ||
			tc.GetPrivateKey().GetFilename() != path.Join(cleanDir, bootstrap.KeyFile) {
			t.Fatalf("node secret names %q and %q", tc.GetCertificateChain().GetFilename(), tc.GetPrivateKey().GetFilename())
		}
		bundle, err := bootstrap.BundleSDS(p)
		if err != nil {
			t.Fatal(err)
		}
		s, err = envoycheck.ParseSDS(bundle)
		if err != nil {
			t.Fatalf("%s of %+v does not pass Envoy's validation: %v\n%s", bootstrap.BundleSDSFile, p, err, bundle)
		}
		if got := s[0].GetValidationContext().GetTrustedCa().GetFilename(); got != path.Join(cleanDir, bootstrap.IssuersFile) {
			t.Fatalf("bundle secret names %q", got)
		}
	})
}

// sameServers compares host:port lists as addresses: Envoy's port is a
// number, so "a:01" in the Params is "a:1" in envoy.yaml.
func sameServers(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		gh, gp, _ := net.SplitHostPort(got[i])
		wh, wp, _ := net.SplitHostPort(want[i])
		gn, _ := strconv.Atoi(gp)
		wn, _ := strconv.Atoi(wp)
		if gh != wh || gn != wn {
			return false
		}
	}
	return true
}
