package admin_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
)

func TestNodes(t *testing.T) {
	ts := newServer(t)
	for _, name := range []string{"echo", "web"} {
		if a := call(t, ts, "POST", api.PathIdentities, strings.NewReader(`{"name":"`+name+`"}`)); a.status != http.StatusCreated {
			t.Fatalf("add %s: %d %s", name, a.status, a.body)
		}
	}
	a := call(t, ts, "POST", api.PathNodes, strings.NewReader(`{"name":"edge-1","kind":"front-proxy","identities":["web","echo","web"]}`))
	var tok api.JoinToken
	if a.status != http.StatusCreated || json.Unmarshal(a.body, &tok) != nil {
		t.Fatalf("add node: %d %s", a.status, a.body)
	}
	if len(tok.Token) < 40 || len(tok.CASHA256) != 64 || tok.Node.Kind != "front-proxy" || strings.Join(tok.Node.Identities, ",") != "echo,web" || tok.Node.Joined {
		t.Fatalf("token answer = %+v", tok)
	}

	a = call(t, ts, "POST", api.PathNodes+"/edge-1/token", strings.NewReader(`{}`))
	var tok2 api.JoinToken
	if a.status != http.StatusOK || json.Unmarshal(a.body, &tok2) != nil || tok2.Token == tok.Token {
		t.Fatalf("new token: %d %s", a.status, a.body)
	}

	a = call(t, ts, "DELETE", api.PathNodes+"/edge-1/identities/echo", nil)
	var n api.Node
	if a.status != http.StatusOK || json.Unmarshal(a.body, &n) != nil || strings.Join(n.Identities, ",") != "web" {
		t.Fatalf("unassign: %d %s", a.status, a.body)
	}
	a = call(t, ts, "POST", api.PathNodes+"/edge-1/identities", strings.NewReader(`{"identity":"echo"}`))
	if a.status != http.StatusOK || json.Unmarshal(a.body, &n) != nil || strings.Join(n.Identities, ",") != "echo,web" {
		t.Fatalf("assign: %d %s", a.status, a.body)
	}

	var before, after api.Identity
	json.Unmarshal(call(t, ts, "GET", api.PathIdentities+"/echo", nil).body, &before)
	a = call(t, ts, "POST", api.PathReissue+"/echo", strings.NewReader(`{}`))
	if a.status != http.StatusOK || json.Unmarshal(a.body, &after) != nil || after.Cert.Serial == before.Cert.Serial {
		t.Fatalf("reissue: %d %s", a.status, a.body)
	}

	var list []api.Node
	if a := call(t, ts, "GET", api.PathNodes, nil); json.Unmarshal(a.body, &list) != nil || len(list) != 1 || list[0].Connection.Connected {
		t.Fatalf("list: %s", a.body)
	}

	for _, tt := range []struct {
		name, method, path, body string
		status                   int
	}{
		{"duplicate node", "POST", api.PathNodes, `{"name":"edge-1"}`, 409},
		{"unknown identity", "POST", api.PathNodes, `{"name":"n2","identities":["nobody"]}`, 404},
		{"bad kind", "POST", api.PathNodes, `{"name":"n3","kind":"router"}`, 400},
		{"bad node name", "POST", api.PathNodes, `{"name":"a/b"}`, 400},
		{"unknown node", "GET", api.PathNodes + "/nobody", "", 404},
		{"assign unknown identity", "POST", api.PathNodes + "/edge-1/identities", `{"identity":"nobody"}`, 404},
		{"unassign not held", "DELETE", api.PathNodes + "/edge-1/identities/nobody", "", 404},
		{"reissue unknown", "POST", api.PathReissue + "/nobody", `{}`, 404},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var body *strings.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			var a answer
			if body != nil {
				a = call(t, ts, tt.method, tt.path, body)
			} else {
				a = call(t, ts, tt.method, tt.path, nil)
			}
			if a.status != tt.status {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tt.status)
			}
		})
	}
}
