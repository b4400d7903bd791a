package workload_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/testkit"
	wl "github.com/meshca/meshca/internal/workload"
	"github.com/meshca/meshca/internal/workload/attest"
)

// Environment of the child process TestAnotherUIDIsRefused starts.
const (
	envChildAddr = "MESHCA_WORKLOAD_CHILD_ADDR"
	nobody       = 65534
)

// childResult is what the child prints.
type childResult struct {
	IDs  []string `json:"ids"`
	Code string   `json:"code"`
	UID  int      `json:"uid"`
}

// TestWorkloadChild is the child process's body: it fetches SVIDs with
// go-spiffe from the address in its environment and prints the outcome.
// Run directly, it does nothing.
func TestWorkloadChild(t *testing.T) {
	addr := os.Getenv(envChildAddr)
	if addr == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res := childResult{UID: os.Getuid()}
	svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
	res.Code = status.Code(err).String()
	for _, s := range svids {
		res.IDs = append(res.IDs, s.ID.String())
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

// TestAnotherUIDIsRefused: a real process running as another user (uid
// 65534) gets only the SVID whose selectors name its uid and executable,
// and is refused, with the hook seeing its uid and executable, once no SVID
// names it. It needs root, to start a process as another user.
func TestAnotherUIDIsRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("starting a process as another user needs root")
	}
	// The child runs a copy of this test binary from a directory the other
	// user can reach, and connects to a socket it may open: the
	// Workload API socket is open to every local user, who are told apart
	// by their credentials.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	exe := filepath.Join(dir, "child.test")
	copyFile(t, exe)

	root := testkit.NewCA(t, pkix.Name{CommonName: "root"}, time.Now().Add(24*time.Hour), nil)
	me := self(t)
	web := svid(t, root, "/web", "uid:"+itoa(me.UID))
	batch := svid(t, root, "/batch", "uid:"+itoa(nobody), "path:"+exe)
	src := newSource(wl.State{TrustDomain: td, SVIDs: []wl.SVID{web, batch}, Bundle: []*x509.Certificate{root.Cert}})
	denied := make(chan peercred.Caller, 4)
	gate := attest.NewGate(attest.GateConfig{Logger: testkit.Logger(t), Denied: func(c peercred.Caller, _ string) { denied <- c }})
	sock := filepath.Join(dir, "w.sock")
	addr := serveAt(t, sock, wl.Config{Source: src, Gate: gate})
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}

	got := runChild(t, exe, addr)
	if got.UID != nobody || got.Code != "OK" || strings.Join(got.IDs, ",") != batch.SPIFFEID {
		t.Fatalf("child as uid %d: %+v; want only %s", nobody, got, batch.SPIFFEID)
	}
	t.Logf("a process of uid %d got only %v", got.UID, got.IDs)

	src.Set(wl.State{TrustDomain: td, SVIDs: []wl.SVID{web}, Bundle: []*x509.Certificate{root.Cert}})
	got = runChild(t, exe, addr)
	if got.Code != "PermissionDenied" || len(got.IDs) != 0 {
		t.Fatalf("child as uid %d with no SVID for it: %+v; want PermissionDenied", nobody, got)
	}
	select {
	case c := <-denied:
		if c.UID != nobody || c.GID != nobody || c.Path != exe || c.PID == int32(os.Getpid()) {
			t.Fatalf("the hook saw %v; want uid and gid %d, path %s, the child's pid", c, nobody, exe)
		}
		t.Logf("refused and reported: %v", c)
	case <-time.After(timeout):
		t.Fatal("the Denied hook did not fire")
	}
}

func copyFile(t *testing.T, dst string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func runChild(t *testing.T, exe, addr string) childResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestWorkloadChild$", "-test.count=1")
	cmd.Env = []string{envChildAddr + "=" + addr}
	cmd.Dir = filepath.Dir(exe)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var res childResult
	line, _, _ := strings.Cut(string(out), "\n")
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	return res
}
