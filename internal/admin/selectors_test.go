package admin_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
)

// TestAssignSelectors: selectors of an agent node's assignment are stored,
// shown, replaced by the next assignment, dropped with the identity, and
// refused when malformed, too many, or on a node without an agent.
func TestAssignSelectors(t *testing.T) {
	ts := newServer(t)
	for _, name := range []string{"web", "db"} {
		if a := call(t, ts, "POST", api.PathIdentities, strings.NewReader(`{"name":"`+name+`"}`)); a.status != http.StatusCreated {
			t.Fatalf("add %s: %d %s", name, a.status, a.body)
		}
	}
	for _, body := range []string{`{"name":"agent-1","agent":true}`, `{"name":"plain-1"}`} {
		if a := call(t, ts, "POST", api.PathNodes, strings.NewReader(body)); a.status != http.StatusCreated {
			t.Fatalf("add node %s: %d %s", body, a.status, a.body)
		}
	}
	assign := func(node, body string) (api.Node, answer) {
		t.Helper()
		a := call(t, ts, "POST", api.PathNodes+"/"+node+"/identities", strings.NewReader(body))
		var n api.Node
		if a.status == http.StatusOK {
			if err := json.Unmarshal(a.body, &n); err != nil {
				t.Fatal(err)
			}
		}
		return n, a
	}
	show := func(node string) api.Node {
		t.Helper()
		var n api.Node
		if a := call(t, ts, "GET", api.PathNodes+"/"+node, nil); a.status != http.StatusOK || json.Unmarshal(a.body, &n) != nil {
			t.Fatalf("show %s: %d %s", node, a.status, a.body)
		}
		return n
	}

	n, a := assign("agent-1", `{"identity":"web","selectors":["uid:01000","path:/usr/bin/echo","uid:1000"]}`)
	if a.status != http.StatusOK || strings.Join(n.Selectors["web"], " ") != "path:/usr/bin/echo uid:1000" {
		t.Fatalf("assign with selectors: %d %s", a.status, a.body)
	}
	if _, a := assign("agent-1", `{"identity":"db"}`); a.status != http.StatusOK {
		t.Fatalf("assign without selectors: %d %s", a.status, a.body)
	}
	n = show("agent-1")
	if strings.Join(n.Identities, ",") != "db,web" || len(n.Selectors) != 1 || strings.Join(n.Selectors["web"], " ") != "path:/usr/bin/echo uid:1000" {
		t.Fatalf("node show: identities %v, selectors %v; want db (any caller) and web (path and uid)", n.Identities, n.Selectors)
	}

	// Assigning again replaces the selectors; none means any local caller.
	if n, a := assign("agent-1", `{"identity":"web","selectors":["gid:50"]}`); a.status != http.StatusOK || strings.Join(n.Selectors["web"], " ") != "gid:50" {
		t.Fatalf("replace selectors: %d %s", a.status, a.body)
	}
	if n, a := assign("agent-1", `{"identity":"web"}`); a.status != http.StatusOK || n.Selectors != nil {
		t.Fatalf("assign again without selectors: %d %s; want no selectors left", a.status, a.body)
	}
	// Unassigning drops the identity's selectors with it.
	assign("agent-1", `{"identity":"web","selectors":["uid:7"]}`)
	if a := call(t, ts, "DELETE", api.PathNodes+"/agent-1/identities/web", nil); a.status != http.StatusOK {
		t.Fatalf("unassign: %d %s", a.status, a.body)
	}
	if n := show("agent-1"); n.Selectors != nil {
		t.Fatalf("after unassign: selectors %v, want none", n.Selectors)
	}

	many := `"uid:1"` + strings.Repeat(`,"uid:1"`, 16)
	for _, tt := range []struct {
		name, node, body, want string
	}{
		{"unknown kind", "agent-1", `{"identity":"web","selectors":["user:alice"]}`, `unknown kind \"user\"`},
		{"relative path", "agent-1", `{"identity":"web","selectors":["path:bin/echo"]}`, "absolute, clean"},
		{"uid not a number", "agent-1", `{"identity":"web","selectors":["uid:root"]}`, "decimal number"},
		{"too many", "agent-1", `{"identity":"web","selectors":[` + many + `]}`, "at most 16"},
		{"not an agent node", "plain-1", `{"identity":"web","selectors":["uid:1000"]}`, "not one"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, a := assign(tt.node, tt.body)
			var e api.Error
			if a.status != http.StatusBadRequest || json.Unmarshal(a.body, &e) != nil || e.Code != api.CodeInvalid || !strings.Contains(string(a.body), tt.want) {
				t.Fatalf("got %d %s; want 400 invalid naming %q", a.status, a.body, tt.want)
			}
		})
	}
	if n := show("agent-1"); n.Selectors != nil || strings.Join(n.Identities, ",") != "db" {
		t.Fatalf("refused assignments changed the node: %+v", n)
	}
}

// TestAddNodeWithSelectors: node add with selectors gives them to each
// identity; without an agent, or without identities, it is refused and
// nothing is registered.
func TestAddNodeWithSelectors(t *testing.T) {
	ts := newServer(t)
	for _, name := range []string{"web", "db"} {
		if a := call(t, ts, "POST", api.PathIdentities, strings.NewReader(`{"name":"`+name+`"}`)); a.status != http.StatusCreated {
			t.Fatalf("add %s: %d %s", name, a.status, a.body)
		}
	}
	a := call(t, ts, "POST", api.PathNodes, strings.NewReader(`{"name":"a1","agent":true,"identities":["web","db"],"selectors":["uid:1000","gid:0100"]}`))
	var tok api.JoinToken
	if a.status != http.StatusCreated || json.Unmarshal(a.body, &tok) != nil {
		t.Fatalf("add node: %d %s", a.status, a.body)
	}
	for _, id := range []string{"db", "web"} {
		if got := strings.Join(tok.Node.Selectors[id], " "); got != "gid:100 uid:1000" {
			t.Fatalf("%s selectors = %q, want gid:100 uid:1000", id, got)
		}
	}
	for _, tt := range []struct{ name, body, want string }{
		{"no agent", `{"name":"p1","identities":["web"],"selectors":["uid:1"]}`, "add --agent"},
		{"no identities", `{"name":"p2","agent":true,"selectors":["uid:1"]}`, "name them too"},
		{"bad selector", `{"name":"p3","agent":true,"identities":["web"],"selectors":["pid:1"]}`, `unknown kind \"pid\"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := call(t, ts, "POST", api.PathNodes, strings.NewReader(tt.body))
			if a.status != http.StatusBadRequest || !strings.Contains(string(a.body), tt.want) {
				t.Fatalf("got %d %s; want 400 naming %q", a.status, a.body, tt.want)
			}
		})
	}
	var list []api.Node
	if a := call(t, ts, "GET", api.PathNodes, nil); json.Unmarshal(a.body, &list) != nil || len(list) != 1 {
		t.Fatalf("refused adds registered nodes: %s", a.body)
	}
}
