package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/rotation"
)

// startAdmin runs the admin server as meshca does on its loopback listener
// (Run, so the loopback guard applies) and returns its base URL.
func startAdmin(t *testing.T) string {
	t.Helper()
	srv := newAdmin(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("admin server: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// fetch sends a request (JSON body when body is not empty) and returns the
// answer with its body read.
func fetch(t *testing.T, method, url, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// fetchJSON GETs an API path and decodes the answer into v.
func fetchJSON(t *testing.T, base, path string, v any) {
	t.Helper()
	resp, body := fetch(t, "GET", base+path, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// seedStatus registers the identities and the node the status tests look
// for, plus one refused request with markup in it, and returns the
// identities as the API reports them.
func seedStatus(t *testing.T, base string) []api.Identity {
	t.Helper()
	for _, tt := range []struct{ path, body string }{
		{api.PathIdentities, `{"name":"echo","dns_names":["echo.mesh.local"],"ttl":"30m"}`},
		{api.PathIdentities, `{"name":"ns/prod/web"}`},
		{api.PathNodes, `{"name":"edge-1","kind":"front-proxy","identities":["ns/prod/web"]}`},
	} {
		if resp, body := fetch(t, "POST", base+tt.path, tt.body); resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST %s %s: %d %s", tt.path, tt.body, resp.StatusCode, body)
		}
	}
	// Refused, and audited with the hostile name in its detail.
	if resp, body := fetch(t, "POST", base+api.PathIdentities, `{"name":"<script>alert(1)</script>"}`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("hostile name: %d %s", resp.StatusCode, body)
	}
	var ids []api.Identity
	fetchJSON(t, base, api.PathIdentities, &ids)
	if len(ids) != 2 {
		t.Fatalf("identities = %+v", ids)
	}
	return ids
}

var (
	identityRowRE = regexp.MustCompile(`(?s)<tr data-identity="([^"]*)">(.*?)</tr>`)
	nodeRowRE     = regexp.MustCompile(`(?s)<tr data-node="([^"]*)">(.*?)</tr>`)
	auditSeqRE    = regexp.MustCompile(`<tr data-seq="(\d+)">`)
	serialCellRE  = regexp.MustCompile(`<td class="serial">([0-9a-f]+)</td>`)
	deadlineRE    = regexp.MustCompile(`<td class="(expiry|renewal)"><time class="countdown" datetime="[^"]*" data-deadline="([^"]*)"`)
)

// rows maps the data-* key of each table row to the row's HTML.
func rows(re *regexp.Regexp, page string) map[string]string {
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(page, -1) {
		out[m[1]] = m[2]
	}
	return out
}

func TestStatusPage(t *testing.T) {
	base := startAdmin(t)
	ids := seedStatus(t, base)
	var caInfo api.CA
	fetchJSON(t, base, api.PathCA, &caInfo)

	resp, page := fetch(t, "GET", base+"/", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d %s", resp.StatusCode, page)
	}
	for header, want := range map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'",
		"X-Content-Type-Options":  "nosniff",
		"Cache-Control":           "no-store",
	} {
		if got := resp.Header.Get(header); !strings.HasPrefix(got, want) {
			t.Errorf("%s = %q, want %q", header, got, want)
		}
	}

	t.Run("identities", func(t *testing.T) {
		shown := rows(identityRowRE, page)
		if len(shown) != len(ids) {
			t.Fatalf("page shows identities %v, the API %d", keys(shown), len(ids))
		}
		for _, id := range ids {
			row, ok := shown[id.Name]
			if !ok {
				t.Fatalf("no row for %s", id.Name)
			}
			if m := serialCellRE.FindStringSubmatch(row); m == nil || m[1] != id.Cert.Serial {
				t.Errorf("%s: serial cell %v, want %s", id.Name, m, id.Cert.Serial)
			}
			if !strings.Contains(row, id.SPIFFEID) {
				t.Errorf("%s: row lacks %s", id.Name, id.SPIFFEID)
			}
			want := map[string]string{
				"expiry":  id.Cert.NotAfter.UTC().Format(time.RFC3339),
				"renewal": rotation.Policy{}.RenewAt(id.Cert.NotBefore, id.Cert.NotAfter, id.Cert.Serial).UTC().Format(time.RFC3339),
			}
			got := map[string]string{}
			for _, m := range deadlineRE.FindAllStringSubmatch(row, -1) {
				got[m[1]] = m[2]
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s: deadlines %v, want %v", id.Name, got, want)
			}
		}
	})

	t.Run("nodes", func(t *testing.T) {
		shown := rows(nodeRowRE, page)
		row, ok := shown["edge-1"]
		if len(shown) != 1 || !ok {
			t.Fatalf("page shows nodes %v, want edge-1", keys(shown))
		}
		for _, want := range []string{`<td class="kind">front-proxy</td>`, "not connected", "ns/prod/web", "not joined"} {
			if !strings.Contains(row, want) {
				t.Errorf("node row lacks %q:\n%s", want, row)
			}
		}
	})

	t.Run("ca", func(t *testing.T) {
		want := `<dd class="serial" id="ca-issuer-serial">` + caInfo.Issuer.Serial + `</dd>`
		if caInfo.Issuer.Serial == "" || !strings.Contains(page, want) {
			t.Errorf("page lacks the issuer serial %q", caInfo.Issuer.Serial)
		}
		for _, r := range caInfo.Roots {
			if !strings.Contains(page, r.SHA256) {
				t.Errorf("page lacks root %s", r.Serial)
			}
		}
		if !strings.Contains(page, `<span class="phase">none in progress</span>`) {
			t.Error("page does not say that no rotation is in progress")
		}
	})

	t.Run("audit", func(t *testing.T) {
		var evs []api.AuditEvent
		fetchJSON(t, base, api.PathAudit, &evs)
		if !strings.Contains(page, `<td class="action">identity.add</td>`) {
			t.Error("page shows no identity.add event")
		}
		if got, want := auditSeqs(page), lastSeqs(evs, 20); !slices.Equal(got, want) {
			t.Errorf("audit rows %v, want %v", got, want)
		}
	})

	t.Run("escaping and secrets", func(t *testing.T) {
		if !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Error("the refused name is not shown escaped")
		}
		if n := strings.Count(page, "<script"); n != 1 || !strings.Contains(page, `<script src="/static/status.js"></script>`) {
			t.Errorf("page has %d script tags, want only its own", n)
		}
		for _, bad := range []string{"PRIVATE KEY", "-----BEGIN", "pkcs8"} {
			if strings.Contains(strings.ToLower(page), strings.ToLower(bad)) {
				t.Errorf("page contains %q", bad)
			}
		}
	})

	t.Run("script", func(t *testing.T) {
		resp, js := fetch(t, "GET", base+"/static/status.js", "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(js, "data-deadline") ||
			resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("status.js: %d %v", resp.StatusCode, resp.Header)
		}
	})

	t.Run("only the root", func(t *testing.T) {
		if resp, _ := fetch(t, "GET", base+"/nothing-here", ""); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /nothing-here: %d, want 404", resp.StatusCode)
		}
		if resp, _ := fetch(t, "POST", base+"/", "{}"); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /: %d, want 405", resp.StatusCode)
		}
	})

	t.Run("loopback guard", func(t *testing.T) {
		req, _ := http.NewRequest("GET", base+"/", nil)
		req.Host = "attacker.example" // DNS rebinding
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET / for attacker.example: %d, want 403", resp.StatusCode)
		}
	})
}

// TestStatusRecentAudit checks that the page shows exactly the newest 20
// audit events, newest first, as the log grows past the points where the
// search for the newest event gallops and bisects.
func TestStatusRecentAudit(t *testing.T) {
	base := startAdmin(t)
	var evs []api.AuditEvent
	fetchJSON(t, base, api.PathAudit, &evs)
	total := len(evs)
	for _, want := range []int{19, 20, 21, 40, 41, 79, 80, 81, 170} {
		// An add is two audit events (identity.add, cert.issue); a refused
		// add of a new name is one (refusals are aggregated per source and
		// reason, so only the first of each is recorded at once).
		for total < want {
			if want-total >= 2 {
				if resp, body := fetch(t, "POST", base+api.PathIdentities, `{"name":"id-`+strconv.Itoa(total)+`"}`); resp.StatusCode != http.StatusCreated {
					t.Fatalf("add: %d %s", resp.StatusCode, body)
				}
				total += 2
				continue
			}
			if resp, body := fetch(t, "POST", base+api.PathIdentities, `{"name":"bad name `+strconv.Itoa(total)+`"}`); resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("refused add: %d %s", resp.StatusCode, body)
			}
			total++
		}
		t.Run(strconv.Itoa(want), func(t *testing.T) {
			fetchJSON(t, base, api.PathAudit, &evs)
			if len(evs) != want {
				t.Fatalf("%d audit events, want %d", len(evs), want)
			}
			_, page := fetch(t, "GET", base+"/", "")
			if got, want := auditSeqs(page), lastSeqs(evs, 20); !slices.Equal(got, want) {
				t.Errorf("audit rows %v, want %v", got, want)
			}
		})
	}
}

func auditSeqs(page string) []uint64 {
	var out []uint64
	for _, m := range auditSeqRE.FindAllStringSubmatch(page, -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		out = append(out, n)
	}
	return out
}

// lastSeqs returns the sequence numbers of the newest n events, newest
// first.
func lastSeqs(evs []api.AuditEvent, n int) []uint64 {
	var out []uint64
	for i := len(evs) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, evs[i].Seq)
	}
	return out
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
