package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
)

// During a CA rotation on a shared store each replica line says how its
// nodes stand, so that an operator sees which replica the rotation waits
// for.
func TestStatusReplicaNodes(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	st := Status{Replicas: []api.Replica{
		{ID: "a1", XDS: "10.0.0.1:6565", Since: now, Self: true, Nodes: &api.ReplicaNodes{Reported: true, Connected: 40, Pending: 3, At: now}},
		{ID: "b2", XDS: "10.0.0.2:6565", Since: now, Nodes: &api.ReplicaNodes{}},
		{ID: "c3", XDS: "10.0.0.3:6565", Since: now},
	}}
	var out bytes.Buffer
	writeStatus(&out, st, now)
	lines := map[string]string{}
	for _, l := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "replica" {
			lines[f[1]] = l
		}
	}
	for id, want := range map[string]string{
		"a1": "(this one); 40 node(s) connected, 3 to acknowledge (reported 2026-12-02T12:00:00Z)",
		"b2": "; its nodes not reported for this CA rotation yet",
		"c3": "up since 2026-12-02T12:00:00Z",
	} {
		if !strings.HasSuffix(lines[id], want) {
			t.Errorf("replica %s: %q, want it to end in %q", id, lines[id], want)
		}
	}
}
