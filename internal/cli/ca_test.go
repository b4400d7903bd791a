package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

func TestWaitRotationFollowsPhases(t *testing.T) {
	states := []*api.CARotation{
		{Kind: "root", Phase: "publishing", WaitingFor: "2 connected node(s) to acknowledge"},
		{Kind: "root", Phase: "publishing", WaitingFor: "2 connected node(s) to acknowledge"},
		{Kind: "root", Phase: "reissuing", WaitingFor: "3 leaf certificate(s) to reissue"},
		nil,
	}
	var mu sync.Mutex
	i := 0
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		st := states[min(i, len(states)-1)]
		i++
		json.NewEncoder(w).Encode(api.CA{Issuer: api.CACert{Serial: "abc"}, Rotation: st})
	}))
	defer ts.Close()
	g := &globals{cfg: Config{Getenv: func(string) string { return "" }}, admin: strings.TrimPrefix(ts.URL, "http://")}
	var out bytes.Buffer
	cmd := &cobra.Command{}
	cmd.SetOut(&out)
	cmd.SetContext(context.Background())
	if err := waitRotation(cmd, g, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "publishing; waiting for 2 connected") ||
		!strings.Contains(lines[1], "reissuing; waiting for 3 leaf") || !strings.Contains(lines[2], "rotation done: issuer abc") {
		t.Fatalf("output:\n%s", out.String())
	}
}
