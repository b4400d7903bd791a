package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
)

// TestWaitRotationReturnsWhenOwnWorkIsDone: --wait prints progress and
// returns once only nodes' renewals of their node certificates are left,
// instead of following the rotation until the last node certificate
// expires.
func TestWaitRotationReturnsWhenOwnWorkIsDone(t *testing.T) {
	end := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	states := []*api.CARotation{
		{Kind: "root", Phase: "reissuing", Leaves: 10, Reissued: 4, NodesConnected: 2, WaitingFor: "6 leaf certificate(s) to re-issue under the new CA"},
		{Kind: "root", Phase: "reissuing", Leaves: 10, Reissued: 10, NodesConnected: 2, NodesAcked: 1, WaitingFor: "1 of 2 connected node(s) to acknowledge"},
		{Kind: "root", Phase: "reissuing", Leaves: 10, Reissued: 10, NodesConnected: 2, NodesAcked: 2, OldNodeCerts: 2, OwnWorkDone: true,
			WaitingFor: "2 node(s) to renew their node certificate under the new root", RetireAfter: &end},
		nil, // never reached
	}
	got, i := followRotation(t, states)
	for _, want := range []string{
		"re-issued 4 of 10 leaves, nodes acknowledged 0 of 2 connected",
		"nodes acknowledged 1 of 2 connected",
		"2 node certificate(s) from the previous CA",
		"meshca's part of the rotation is done: issuer abc",
		"by 2030-01-02T03:04:05Z at the latest",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if i != 3 {
		t.Fatalf("polled %d times, want 3 (it must stop at own_work_done)", i)
	}
}
