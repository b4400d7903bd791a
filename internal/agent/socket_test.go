package agent_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
)

// TestAgentSocketPath: the agent serves SDS only where no other user can
// replace its socket, never over a file that is not a socket, replaces a
// stale socket, and removes its own on exit.
func TestAgentSocketPath(t *testing.T) {
	// A connection that is never reached: the cases that start fail
	// before they call meshca, and the one that runs is stopped.
	conn, err := grpc.NewClient("passthrough:///127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	run := func(socket string) (context.CancelFunc, <-chan error) {
		a, err := agent.New(agent.Config{Conn: conn, Node: "n", TrustDomain: td, SDSSocket: socket, Clock: clock.NewFake(time.Now())})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		return cancel, done
	}
	refused := func(name, socket string) {
		t.Helper()
		cancel, done := run(socket)
		defer cancel()
		select {
		case err := <-done:
			if !errors.Is(err, agent.ErrSocketPath) {
				t.Fatalf("%s: Run = %v, want ErrSocketPath", name, err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("%s: the agent serves", name)
		}
	}
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	refused("directory writable by others", filepath.Join(open, "sds.sock"))
	refused("relative path", "run/sds.sock")
	file := filepath.Join(dir, "own", "sds.sock")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	refused("a regular file in the way", file)
	if data, err := os.ReadFile(file); err != nil || string(data) != "not a socket" {
		t.Fatalf("the file in the way was touched: %q, %v", data, err)
	}

	// A stale socket (its listener gone without unlinking) is replaced.
	stale := filepath.Join(dir, "stale", "sds.sock")
	if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	cancel, done := run(stale)
	c := sdsClient(t, stale)
	ctx, stop := context.WithTimeout(context.Background(), waitLimit)
	defer stop()
	// The agent answers on the path (an empty fetch is answered or
	// refused by the SDS server, not by a dead socket).
	stream, err := c.StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("SDS on the replaced socket: %v", err)
	}
	_ = stream.CloseSend()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after exit: %v", err)
	}
}
