package agent

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/workload/attest"
)

// A state published just before an identity was unassigned still holds
// its secret: a wildcard answer (state of the world or fetch) must not
// carry it to a caller that the assignments no longer allow. And names
// beside a delta wildcard's "*" are checked like any other, so that a
// stream cannot keep names that are no secret of the node.
func TestSDSGateWildcardFollowsAssignments(t *testing.T) {
	const td = "spiffe://mesh.local"
	g := sdsGate{
		a:      &Agent{selectors: map[string][]string{"web": nil}},
		gate:   attest.NewGate(attest.GateConfig{}),
		bundle: td,
	}
	c := peercred.Caller{UID: 1000, GID: 1000, PID: 42, Path: "/usr/bin/envoy"}
	cur := &published{version: "7", names: []string{td, td + "/gone", td + "/web"}, secrets: map[string]*secret{}}
	for _, n := range cur.names {
		cur.secrets[n] = &secret{version: n}
	}

	if err := g.checkCaller(c, nil, true); err != nil {
		t.Fatalf("wildcard of a caller every assignment allows: %v", err)
	}
	_, versions := sotwAnswer(cur, nil, true, g.mayHave(c))
	got := make([]string, 0, len(versions))
	for n := range versions {
		got = append(got, n)
	}
	slices.Sort(got)
	if want := []string{td, td + "/web"}; !slices.Equal(got, want) {
		t.Fatalf("wildcard answer carries %v, want %v (gone is no longer assigned)", got, want)
	}

	junk := td + "/" + strings.Repeat("x", 64<<10)
	err := g.checkCaller(c, []string{"*", junk}, true)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a name beside \"*\" that is no identity of the node: %v, want PermissionDenied", err)
	}
	if err := g.checkCaller(c, []string{"*", td + "/web"}, true); err != nil {
		t.Fatalf("an assigned name beside \"*\": %v", err)
	}
}
