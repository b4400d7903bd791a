package admin_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// chromiumFlags make a headless Chromium quiet and self-contained: no
// sandbox (CI runs as root), no network of its own besides the page.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
}

// chromium runs the browser with a fresh profile and returns its stdout.
func chromium(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args = append(append(slices.Clone(chromiumFlags), "--user-data-dir="+t.TempDir()), args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// countdownRE is what status.js writes into a countdown; the server writes
// an absolute time ("2026-01-02 15:04:05 UTC"), which does not match.
var countdownRE = regexp.MustCompile(`^(\d+d \d+h|\d+h \d+m|\d+m \d+s)$`)

var countdownCellRE = regexp.MustCompile(`<td class="(expiry|renewal)"><time class="countdown[^"]*"[^>]*>([^<]*)</time>`)

// TestStatusPageInBrowser loads the status page of a running server in
// headless Chromium, checks what the page shows after its script ran
// against the API, and keeps a screenshot.
func TestStatusPageInBrowser(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run `make deps` (it installs Debian's chromium package)")
	}
	base := startAdmin(t)
	ids := seedStatus(t, base)

	dom := chromium(t, bin, "--dump-dom", base+"/")
	shown := rows(identityRowRE, dom)
	for _, id := range ids {
		row, ok := shown[id.Name]
		if !ok {
			t.Fatalf("rendered page has no row for %s:\n%s", id.Name, dom)
		}
		if m := serialCellRE.FindStringSubmatch(row); m == nil || m[1] != id.Cert.Serial {
			t.Errorf("%s: serial cell %v, want %s", id.Name, m, id.Cert.Serial)
		}
		cells := countdownCellRE.FindAllStringSubmatch(row, -1)
		if len(cells) != 2 {
			t.Fatalf("%s: %d countdowns, want expiry and renewal:\n%s", id.Name, len(cells), row)
		}
		for _, c := range cells {
			if !countdownRE.MatchString(c[2]) {
				t.Errorf("%s: %s shows %q, not a countdown written by status.js", id.Name, c[1], c[2])
			}
		}
	}
	if !strings.Contains(rows(nodeRowRE, dom)["edge-1"], "not connected") {
		t.Error("rendered page does not show edge-1 as not connected")
	}

	dir := os.Getenv("MESHCA_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "status-page.png")
	chromium(t, bin, "--screenshot="+shot, "--window-size=1280,800", base+"/")
	fi, err := os.Stat(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if fi.Size() < 10<<10 {
		t.Fatalf("screenshot %s is %d bytes: too small to show the page", shot, fi.Size())
	}
	t.Logf("screenshot: %s (%d bytes)", shot, fi.Size())
}
