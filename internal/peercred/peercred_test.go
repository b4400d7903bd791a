package peercred_test

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
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshca/meshca/internal/peercred"
)

// self is the Caller this test process must be seen as.
func self(t *testing.T) peercred.Caller {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("own executable: %v", err)
	}
	return peercred.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), Path: exe}
}

func listen(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func TestHandshakeReadsTheConnectingProcess(t *testing.T) {
	l, path := listen(t)
	type result struct {
		c   peercred.Caller
		err error
	}
	got := make(chan result, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer conn.Close()
		_, info, err := peercred.New().ServerHandshake(conn)
		if err != nil {
			got <- result{err: err}
			return
		}
		got <- result{c: info.(peercred.Caller)}
	}()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("handshake: %v", r.err)
		}
		if want := self(t); r.c != want {
			t.Fatalf("caller = %v, want %v", r.c, want)
		}
		t.Logf("caller seen: %v", r.c)
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake within 10s")
	}
}

func TestGRPCHandlerGetsTheCaller(t *testing.T) {
	l, path := listen(t)
	seen := make(chan peercred.Caller, 1)
	srv := grpc.NewServer(grpc.Creds(peercred.New()), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			c, ok := peercred.FromContext(ctx)
			if !ok {
				t.Error("no caller in the request context")
			}
			seen <- c
			return handler(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	defer srv.Stop()

	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	if got, want := <-seen, self(t); got != want {
		t.Fatalf("caller = %v, want %v", got, want)
	}
}

func TestPathEmptyWhenExeCannotBeRead(t *testing.T) {
	l, path := listen(t)
	errc := make(chan error, 1)
	infoc := make(chan peercred.Caller, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer conn.Close()
		// A /proc without this pid: as if the process had exited.
		creds := &peercred.Credentials{ProcRoot: t.TempDir()}
		_, info, err := creds.ServerHandshake(conn)
		if err != nil {
			errc <- err
			return
		}
		infoc <- info.(peercred.Caller)
	}()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	select {
	case err := <-errc:
		t.Fatalf("handshake: %v", err)
	case c := <-infoc:
		want := self(t)
		want.Path = ""
		if c != want {
			t.Fatalf("caller = %v, want %v (uid, gid and pid without a path)", c, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake within 10s")
	}
}

func TestTCPConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	errc := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer conn.Close()
		_, _, err = peercred.New().ServerHandshake(conn)
		errc <- err
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, peercred.ErrNotUnix) {
			t.Fatalf("handshake over TCP: err = %v, want ErrNotUnix", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake within 10s")
	}
}
