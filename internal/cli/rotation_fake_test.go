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

// followRotation runs waitRotation against a fake admin API whose CA
// answers carry states in turn (the last one from then on), issuer abc.
// It returns what waitRotation printed and how many times it polled.
func followRotation(t *testing.T, states []*api.CARotation) (out string, polls int) {
	t.Helper()
	var mu sync.Mutex
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		st := states[min(polls, len(states)-1)]
		polls++
		json.NewEncoder(w).Encode(api.CA{Issuer: api.CACert{Serial: "abc"}, Rotation: st})
	}))
	g := &globals{cfg: Config{Getenv: func(string) string { return "" }}, admin: strings.TrimPrefix(ts.URL, "http://")}
	var buf bytes.Buffer
	cmd := &cobra.Command{}
	cmd.SetOut(&buf)
	cmd.SetContext(context.Background())
	err := waitRotation(cmd, g, time.Millisecond)
	ts.Close()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return buf.String(), polls
}
