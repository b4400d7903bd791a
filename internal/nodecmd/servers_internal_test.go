package nodecmd

import (
	"fmt"
	"slices"
	"testing"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/nodeapi"
)

// serverList keeps the given server first, then each usable replica once,
// and drops what the bootstrap would refuse, so that a bad entry in
// meshca's answer cannot fail a join whose token is already spent.
func TestServerList(t *testing.T) {
	tests := []struct {
		name     string
		server   string
		replicas []string
		want     []string
	}{
		{"older server", "a:1", nil, []string{"a:1"}},
		{"joined one listed too", "a:1", []string{"b:2", "a:1", "c:3"}, []string{"a:1", "b:2", "c:3"}},
		{"duplicates", "a:1", []string{"b:2", "b:2"}, []string{"a:1", "b:2"}},
		{"unusable entries", "a:1", []string{"b", "c:0", "d:x", ":5", "e:70000", "f:4"}, []string{"a:1", "f:4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serverList(tt.server, tt.replicas); !slices.Equal(got, tt.want) {
				t.Errorf("serverList = %v, want %v", got, tt.want)
			}
		})
	}
	var many []string
	for i := range bootstrap.MaxReplicas + 10 {
		many = append(many, fmt.Sprintf("r%d:1", i))
	}
	got := serverList("a:1", many)
	if len(got) != bootstrap.MaxReplicas+1 || got[0] != "a:1" {
		t.Fatalf("%d servers (first %s), want %d with a:1 first", len(got), got[0], bootstrap.MaxReplicas+1)
	}
	if _, err := bootstrap.Envoy(nodeParams(nodeFileWith(got), "/n")); err != nil {
		t.Fatalf("the bootstrap refuses the capped list: %v", err)
	}
}

func nodeFileWith(servers []string) nodeapi.NodeFile {
	return nodeapi.NodeFile{Server: servers[0], Node: "n", Kind: "sidecar", TrustDomain: "mesh.local", Servers: servers}
}
