package admin_test

import (
	"encoding/json"
	"html"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
)

// measureJS runs after status.js in the page the layout test serves and
// writes what a 1280-pixel-wide window shows into the DOM, where
// --dump-dom returns it.
const measureJS = `(function () {
  var vw = window.innerWidth, r = {viewport: vw, scrollWidth: document.documentElement.scrollWidth, outside: [], clipped: []};
  var els = document.querySelectorAll("td, th, dd, dt, p, h1, h2");
  for (var i = 0; i < els.length; i++) {
    var el = els[i], box = el.getBoundingClientRect();
    var what = (el.className || el.tagName) + ": " + el.textContent.trim().slice(0, 60);
    if (box.right > vw + 0.5) r.outside.push(what);
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== "visible") r.clipped.push(what);
  }
  var rot = document.getElementById("ca-rotation");
  r.rotation = rot ? rot.textContent.replace(/\s+/g, " ").trim() : "";
  document.body.setAttribute("data-measure", JSON.stringify(r));
})();
`

type layout struct {
	Viewport    float64  `json:"viewport"`
	ScrollWidth float64  `json:"scrollWidth"`
	Outside     []string `json:"outside"`
	Clipped     []string `json:"clipped"`
	Rotation    string   `json:"rotation"`
}

var (
	measureRE   = regexp.MustCompile(`data-measure="([^"]*)"`)
	timestampRE = regexp.MustCompile(`(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})`)
)

// TestStatusPageLayoutAt1280 renders the status page, with a CA rotation
// in progress and long audit details, in headless Chromium at 1280×800:
// nothing may stick out sideways (no horizontal scroll), no cell may be cut
// off, and the rotation line says each thing once.
func TestStatusPageLayoutAt1280(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run `make deps` (it installs Debian's chromium package)")
	}
	base := startAdmin(t)
	seedStatus(t, base)
	for _, body := range []string{
		`{"name":"ns/prod/payments/settlement-batch-processor-eu-west-1","dns_names":["settlement-batch-processor.eu-west-1.payments.prod.internal.example.com"]}`,
		`{"name":"` + strings.Repeat("x", 300) + `"}`, // refused: a long unbroken audit detail
	} {
		fetch(t, "POST", base+api.PathIdentities, body)
	}
	if resp, body := fetch(t, "POST", base+api.PathCARotate, `{}`); resp.StatusCode >= 300 {
		t.Fatalf("rotate: %d %s", resp.StatusCode, body)
	}

	// Serve the page with the measuring script added, from a test server
	// (the page's own CSP allows only its own scripts).
	_, page := fetch(t, "GET", base+"/", "")
	_, script := fetch(t, "GET", base+"/static/status.js", "")
	page = strings.Replace(page, "</body>", `<script src="/static/measure.js"></script></body>`, 1)
	mux := http.NewServeMux()
	serve := func(path, ctype, body string) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", ctype)
			w.Write([]byte(body))
		})
	}
	serve("/{$}", "text/html; charset=utf-8", page)
	serve("/static/status.js", "text/javascript", script)
	serve("/static/measure.js", "text/javascript", measureJS)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	dom := chromium(t, bin, "--window-size=1280,800", "--dump-dom", "http://"+ln.Addr().String()+"/")
	m := measureRE.FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the measuring script did not run:\n%s", dom)
	}
	var got layout
	if err := json.Unmarshal([]byte(html.UnescapeString(m[1])), &got); err != nil {
		t.Fatal(err)
	}
	t.Logf("at %.0f px: page width %.0f px; rotation line: %q", got.Viewport, got.ScrollWidth, got.Rotation)
	if got.Viewport < 1200 || got.Viewport > 1300 {
		t.Fatalf("window is %.0f px wide, want about 1280", got.Viewport)
	}
	if got.ScrollWidth > got.Viewport {
		t.Errorf("the page is %.0f px wide in a %.0f px window: it scrolls sideways", got.ScrollWidth, got.Viewport)
	}
	for _, o := range got.Outside {
		t.Errorf("sticks out to the right: %s", o)
	}
	for _, c := range got.Clipped {
		t.Errorf("cut off: %s", c)
	}
	if got.Rotation == "" || !strings.Contains(got.Rotation, "intermediate rotation") {
		t.Fatalf("rotation line %q", got.Rotation)
	}
	seen := map[string]bool{}
	for _, ts := range timestampRE.FindAllStringSubmatch(got.Rotation, -1) {
		if key := ts[1] + " " + ts[2]; seen[key] {
			t.Errorf("rotation line gives %s twice: %s", key, got.Rotation)
		} else {
			seen[key] = true
		}
	}
	if strings.Contains(got.Rotation, "retired after") {
		t.Errorf("rotation line speaks of a future retirement in the past tense: %s", got.Rotation)
	}
}

// A root rotation waiting for nodes (no retirement time yet) renders too,
// with each time once.
func TestStatusPageRootRotationLine(t *testing.T) {
	base := startAdmin(t)
	if resp, body := fetch(t, "POST", base+api.PathCARotate, `{"root":true}`); resp.StatusCode >= 300 {
		t.Fatalf("rotate --root: %d %s", resp.StatusCode, body)
	}
	resp, page := fetch(t, "GET", base+"/", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status page during a root rotation: %d %s", resp.StatusCode, page)
	}
	line := regexp.MustCompile(`(?s)<dd id="ca-rotation">(.*?)</dd>`).FindStringSubmatch(page)
	if line == nil || !strings.Contains(line[1], "root rotation started") {
		t.Fatalf("rotation line: %v", line)
	}
	if n := len(timestampRE.FindAllString(line[1], -1)); n != 1 {
		t.Errorf("rotation line has %d times, want the start only: %s", n, line[1])
	}
	t.Logf("%s", line[1])
}
