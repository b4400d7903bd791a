package bootstrap_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
)

func replicaParams() bootstrap.Params {
	p := goldenParams()
	// The joined server again, and a duplicate: each address once, Server first.
	p.Replicas = []string{"meshca-2.internal:6565", "meshca.internal:6565", "10.0.0.3:6566", "meshca-2.internal:6565"}
	return p
}

var wantServers = []string{"meshca.internal:6565", "meshca-2.internal:6565", "10.0.0.3:6566"}

// TestGoldenReplicas: with replicas, envoy.yaml's meshca_xds cluster and
// grpc-bootstrap.json's xds_servers list every replica, the joined one
// first.
func TestGoldenReplicas(t *testing.T) {
	p := replicaParams()
	for _, tt := range []struct {
		file   string
		render func(bootstrap.Params) ([]byte, error)
	}{
		{bootstrap.EnvoyFile, bootstrap.Envoy},
		{bootstrap.GRPCFile, bootstrap.GRPC},
	} {
		t.Run(tt.file, func(t *testing.T) {
			got, err := tt.render(p)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(goldenDir, "replicas", tt.file)
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

// TestEnvoyListsEveryReplica: the cluster validates (internal/validate,
// deep) and holds one endpoint per replica in one locality, which Envoy's
// round-robin balancer picks from when it opens a new ADS stream.
func TestEnvoyListsEveryReplica(t *testing.T) {
	y, err := bootstrap.Envoy(replicaParams())
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoycheck.ParseEnvoy(y)
	if err != nil {
		t.Fatalf("ParseEnvoy = %v", err)
	}
	c := b.GetStaticResources().GetClusters()[0]
	if c.GetType() != clusterv3.Cluster_STRICT_DNS || c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN {
		t.Errorf("cluster type %v, lb policy %v", c.GetType(), c.GetLbPolicy())
	}
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 {
		t.Fatalf("%d localities, want 1", len(eps))
	}
	var got []string
	for _, lb := range eps[0].GetLbEndpoints() {
		sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
		got = append(got, sa.GetAddress()+":"+itoa(sa.GetPortValue()))
	}
	if !slices.Equal(got, wantServers) {
		t.Errorf("endpoints = %v, want %v", got, wantServers)
	}
}

// TestGRPCListsEveryServer: xds_servers holds every replica in order, each
// with the same mTLS credentials, and grpc-go's parser accepts it.
func TestGRPCListsEveryServer(t *testing.T) {
	out, err := bootstrap.GRPC(replicaParams())
	if err != nil {
		t.Fatal(err)
	}
	if err := grpcParse(t, out); err != nil {
		t.Fatalf("grpc-go refuses the bootstrap: %v", err)
	}
	var doc struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"channel_creds"`
		} `json:"xds_servers"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range doc.XDSServers {
		got = append(got, s.ServerURI)
		if len(s.ChannelCreds) != 1 || s.ChannelCreds[0].Type != "tls" || s.ChannelCreds[0].Config["ca_certificate_file"] != "/etc/meshca/node/meshca-issuers.pem" {
			t.Errorf("server %s credentials = %+v", s.ServerURI, s.ChannelCreds)
		}
	}
	if !slices.Equal(got, wantServers) {
		t.Errorf("xds_servers = %v, want %v", got, wantServers)
	}
}

func TestReplicasRefused(t *testing.T) {
	for _, tt := range []struct {
		name     string
		replicas []string
		want     string
	}{
		{"no port", []string{"meshca-2.internal"}, "Replicas[0]"},
		{"port 0", []string{"a:1", "b:0"}, "Replicas[1]"},
		{"too many", slices.Repeat([]string{"a:1"}, bootstrap.MaxReplicas+1), "more than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := goldenParams()
			p.Replicas = tt.replicas
			for _, render := range []func(bootstrap.Params) ([]byte, error){bootstrap.Envoy, bootstrap.GRPC} {
				if _, err := render(p); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("err = %v, want %q", err, tt.want)
				}
			}
		})
	}
}

func itoa(u uint32) string { b, _ := json.Marshal(u); return string(b) }
