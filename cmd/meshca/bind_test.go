package main_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServerThatCannotBindCreatesNothing occupies one of the server's
// addresses, as a `make run` server left running does, and checks that a
// second server says which address is taken, exits non-zero, and leaves no
// data directory (and so no CA) behind.
func TestServerThatCannotBindCreatesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		flag string
	}{
		{name: "admin", flag: "--admin-listen"},
		{name: "xds", flag: "--xds-listen"},
		{name: "admin mtls", flag: "--admin-mtls-listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			busy, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer busy.Close()
			addr := busy.Addr().String()
			dataDir := filepath.Join(t.TempDir(), "data")
			args := map[string]string{"--admin-listen": "127.0.0.1:0", "--xds-listen": "127.0.0.1:0"}
			args[tc.flag] = addr
			cmdArgs := []string{"server", "--data-dir", dataDir}
			for f, v := range args {
				cmdArgs = append(cmdArgs, f, v)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary, cmdArgs...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err = cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("server with %s on a busy address: %v, want a non-zero exit\n%s", tc.flag, err, stderr.String())
			}
			if ctx.Err() != nil {
				t.Fatalf("server with %s on a busy address kept running", tc.flag)
			}
			if !strings.Contains(stderr.String(), addr) {
				t.Fatalf("stderr does not name the busy address %s:\n%s", addr, stderr.String())
			}
			if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a server that could not bind created %s (stat: %v)", dataDir, err)
			}
			t.Logf("%s on a busy address: exit %d, %q", tc.flag, ee.ExitCode(), strings.TrimSpace(stderr.String()))
		})
	}
}
