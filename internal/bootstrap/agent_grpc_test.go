package bootstrap_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/bootstrap"
)

// TestGRPCAgentProviders: an agent node's grpc bootstrap declares one
// file_watcher instance per identity, on the files agentfiles names, and
// grpc-go's own parser takes it; other nodes get only "default".
func TestGRPCAgentProviders(t *testing.T) {
	dir := t.TempDir()
	writeNodeFiles(t, dir)
	p := goldenParams()
	p.Dir = dir
	p.Server = "127.0.0.1:6565"
	p.AgentFiles = "/var/lib/meshca-agent/files"
	p.Identities = []string{"greeter", "web"}
	out, err := bootstrap.GRPC(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := grpcParse(t, out); err != nil {
		t.Fatalf("grpc-go refused the agent node's bootstrap: %v\n%s", err, out)
	}
	type prov struct {
		PluginName string            `json:"plugin_name"`
		Config     map[string]string `json:"config"`
	}
	var doc struct {
		Providers map[string]prov `json:"certificate_providers"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Providers) != 3 {
		t.Fatalf("providers %v, want default and one per identity", doc.Providers)
	}
	for _, id := range p.Identities {
		got, ok := doc.Providers[agentfiles.Instance(id)]
		if !ok {
			t.Fatalf("no provider %q", agentfiles.Instance(id))
		}
		cert, key, bundle := agentfiles.Paths(p.AgentFiles, id)
		want := map[string]string{"certificate_file": cert, "private_key_file": key, "ca_certificate_file": bundle, "refresh_interval": "1s"}
		if got.PluginName != "file_watcher" || len(got.Config) != len(want) {
			t.Fatalf("provider %s = %+v, want file_watcher on %v", id, got, want)
		}
		for k, v := range want {
			if got.Config[k] != v {
				t.Errorf("provider %s: %s = %q, want %q", id, k, got.Config[k], v)
			}
		}
	}

	plain := goldenParams()
	out, err = bootstrap.GRPC(plain)
	if err != nil {
		t.Fatal(err)
	}
	doc.Providers = nil
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc.Providers["default"]; !ok || len(doc.Providers) != 1 {
		t.Fatalf("a plain node's providers: %v", doc.Providers)
	}
}

func TestGRPCAgentParamsErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*bootstrap.Params)
	}{
		{"relative files directory", func(p *bootstrap.Params) { p.AgentFiles = "files"; p.Identities = []string{"web"} }},
		{"identities without files directory", func(p *bootstrap.Params) { p.Identities = []string{"web"} }},
		{"identity with a slash", func(p *bootstrap.Params) { p.AgentFiles = "/files"; p.Identities = []string{"../web"} }},
		{"empty identity", func(p *bootstrap.Params) { p.AgentFiles = "/files"; p.Identities = []string{""} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := goldenParams()
			tt.mutate(&p)
			_, err := bootstrap.GRPC(p)
			if !errors.Is(err, bootstrap.ErrInvalidParams) {
				t.Fatalf("err = %v, want ErrInvalidParams", err)
			}
		})
	}
}
