package app_test

import (
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestStatusNamesLeader: on bbolt the only replica leads, and `meshca
// status`, GET /v1/ca and the status page say so, naming it by its xDS
// address.
func TestStatusNamesLeader(t *testing.T) {
	m := startMesh(t, nil)
	if !pollUntil(5*time.Second, 10*time.Millisecond, func() bool { l := caOf(m).Leader; return l != nil && l.Self }) {
		t.Fatalf("GET /v1/ca names no leader, or not this replica: %+v", caOf(m).Leader)
	}
	l := caOf(m).Leader
	_, port, _ := net.SplitHostPort(m.app.XDS)
	if l.Address != m.app.XDS || !strings.HasSuffix(l.ID, ":"+port) {
		t.Fatalf("leader %+v, want address %s and an ID ending in its port", l, m.app.XDS)
	}
	out := m.mustCLI("status")
	if !regexp.MustCompile(`(?m)^leader\s+\S+ at ` + regexp.QuoteMeta(m.app.XDS) + ` \(this replica\)$`).MatchString(out) {
		t.Fatalf("meshca status does not name this replica as leader:\n%s", out)
	}
	page := m.statusPage()
	line := regexp.MustCompile(`(?s)<dd id="ca-leader">(.*?)</dd>`).FindStringSubmatch(page)
	if line == nil || !strings.Contains(line[1], m.app.XDS) || !strings.Contains(line[1], "this replica") {
		t.Fatalf("status page leader line: %q", line)
	}
}
