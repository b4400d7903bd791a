package admin_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
)

// TestRotateEndpoint drives POST /v1/ca/rotate through a root rotation, a
// refused second one, an abort and an emergency rotation, and checks that
// the status page shows the rotation's phase and progress.
func TestRotateEndpoint(t *testing.T) {
	ts := newServer(t)
	post := func(body string) answer {
		t.Helper()
		return call(t, ts, "POST", api.PathCARotate, strings.NewReader(body))
	}
	decode := func(a answer) api.CA {
		t.Helper()
		var c api.CA
		if err := json.Unmarshal(a.body, &c); err != nil {
			t.Fatalf("%s: %v", a.body, err)
		}
		return c
	}
	before := decode(call(t, ts, "GET", api.PathCA, nil))

	a := post(`{"root": true}`)
	if a.status != http.StatusOK {
		t.Fatalf("rotate --root: %d %s", a.status, a.body)
	}
	if c := decode(a); c.Rotation == nil || c.Rotation.Phase != "publishing" || len(c.Roots) != 2 {
		t.Fatalf("after rotate --root: %+v", c)
	}
	page := call(t, ts, "GET", "/", nil)
	for _, want := range []string{"root rotation started ", "phase <strong class=\"phase\">publishing</strong>", "leaves are re-issued after the switch", "nodes acknowledged 0 of 0"} {
		if page.status != http.StatusOK || !strings.Contains(string(page.body), want) {
			t.Fatalf("status page (%d) lacks %q", page.status, want)
		}
	}

	a = post(`{}`)
	var refusal api.Error
	json.Unmarshal(a.body, &refusal)
	if a.status != http.StatusConflict || !strings.Contains(refusal.Error, "phase publishing") || !strings.Contains(refusal.Error, "--abort") || !strings.Contains(refusal.Error, "--emergency") {
		t.Fatalf("second rotation: %d %s", a.status, a.body)
	}
	if a = post(`{"abort": true, "root": true}`); a.status != http.StatusBadRequest {
		t.Fatalf("abort with --root: %d %s", a.status, a.body)
	}
	a = post(`{"abort": true}`)
	if a.status != http.StatusOK {
		t.Fatalf("abort: %d %s", a.status, a.body)
	}
	if c := decode(a); c.Rotation != nil || len(c.Roots) != 1 || c.Roots[0].Serial != before.Roots[0].Serial || c.Issuer.Serial != before.Issuer.Serial ||
		c.LastRotation == nil || !c.LastRotation.Aborted {
		t.Fatalf("after abort: %+v", c)
	}
	a = post(`{"abort": true}`)
	if a.status != http.StatusNotFound || !strings.Contains(string(a.body), "no CA rotation is in progress") {
		t.Fatalf("abort with nothing in progress: %d %s", a.status, a.body)
	}

	a = post(`{"emergency": true, "root": true}`)
	if a.status != http.StatusOK {
		t.Fatalf("emergency: %d %s", a.status, a.body)
	}
	if c := decode(a); c.Rotation != nil || len(c.Roots) != 1 || c.Roots[0].Serial == before.Roots[0].Serial ||
		c.LastRotation == nil || !c.LastRotation.Emergency || c.LastRotation.Kind != "root" {
		t.Fatalf("after emergency: %+v", c)
	}
}
