package main_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
)

// TestCARotateCLI drives `meshca ca rotate` on the real binary: --wait
// returns once the rotation is done (no 30-day wait for a 720h identity,
// no day-long wait for a root rotation without nodes), with progress;
// --abort with nothing in progress says so; --emergency --root re-keys
// every identity and puts the replaced CA's leaves on the CRL.
func TestCARotateCLI(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	const n = 20
	for i := 0; i < n-1; i++ {
		mustRun(t, srv.admin, "identity", "add", fmt.Sprintf("svc-%02d", i))
	}
	mustRun(t, srv.admin, "identity", "add", "long", "--ttl", "720h")
	serials := func() map[string]string {
		var ids []api.Identity
		if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "identity", "list", "-o", "json")), &ids); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, id := range ids {
			out[id.Name] = id.Cert.Serial
		}
		return out
	}
	before := serials()

	for _, args := range [][]string{{"ca", "rotate", "--wait"}, {"ca", "rotate", "--root", "--wait"}} {
		start := time.Now()
		out := mustRun(t, srv.admin, args...)
		took := time.Since(start)
		if !strings.Contains(out, "progress:") || !strings.Contains(out, "rotation done") || !strings.Contains(out, fmt.Sprintf("re-issued %d leaves", n)) {
			t.Fatalf("%v printed:\n%s", args, out)
		}
		t.Logf("%v with %d identities (one of 720h) returned after %s:\n%s", args, n, took.Round(time.Millisecond), out)
		if took > 20*time.Second {
			t.Fatalf("%v took %s", args, took)
		}
	}
	rotated := serials()
	for name, s := range rotated {
		if s == before[name] {
			t.Fatalf("%s was not re-issued", name)
		}
	}

	if r := meshca(t, srv.admin, "ca", "rotate", "--abort"); r.code == 0 || !strings.Contains(r.stderr, "no CA rotation is in progress") {
		t.Fatalf("abort with nothing in progress: exit %d, stderr %q", r.code, r.stderr)
	}

	start := time.Now()
	out := mustRun(t, srv.admin, "ca", "rotate", "--emergency", "--root")
	took := time.Since(start)
	if strings.Contains(out, "progress:") {
		t.Fatalf("emergency rotation still in progress:\n%s", out)
	}
	if !strings.Contains(out, "emergency root, finished") || !strings.Contains(out, fmt.Sprintf("revoked %d certificates", n)) {
		t.Fatalf("emergency rotation printed:\n%s", out)
	}
	t.Logf("ca rotate --emergency --root with %d identities returned after %s:\n%s", n, took.Round(time.Millisecond), out)
	inCRL := testkit.Revoked(t, []byte(mustRun(t, srv.admin, "ca", "crl")))
	for name, s := range rotated {
		if !inCRL[s] {
			t.Errorf("%s's certificate %s from the replaced CA is not in the CRL", name, s)
		}
	}
	for name, s := range serials() {
		if s == rotated[name] || inCRL[s] {
			t.Errorf("%s was not re-keyed by the emergency rotation", name)
		}
	}
	audit := mustRun(t, srv.admin, "audit", "list", "-o", "json")
	var events []api.AuditEvent
	if err := json.Unmarshal([]byte(audit), &events); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range events {
		count[e.Action]++
	}
	if count["ca.rotate.reissue"] != 3*n {
		t.Errorf("%d ca.rotate.reissue records, want %d (three rotations of %d identities)", count["ca.rotate.reissue"], 3*n, n)
	}
	srv.stop(t)
}
