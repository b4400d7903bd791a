package cli

import (
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
)

func TestWaitRotationFollowsPhases(t *testing.T) {
	states := []*api.CARotation{
		{Kind: "root", Phase: "publishing", WaitingFor: "2 connected node(s) to acknowledge"},
		{Kind: "root", Phase: "publishing", WaitingFor: "2 connected node(s) to acknowledge"},
		{Kind: "root", Phase: "reissuing", WaitingFor: "3 leaf certificate(s) to reissue"},
		nil,
	}
	out, _ := followRotation(t, states)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "publishing; waiting for 2 connected") ||
		!strings.Contains(lines[1], "reissuing; waiting for 3 leaf") || !strings.Contains(lines[2], "rotation done: issuer abc") {
		t.Fatalf("output:\n%s", out)
	}
}
