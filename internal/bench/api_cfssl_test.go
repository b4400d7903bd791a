package bench

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestCFSSLServeWorker starts the cfssl worker on a fresh shared CA and
// issues through it: the certificate must pass the leaf check for its own
// name and fail it for another.
func TestCFSSLServeWorker(t *testing.T) {
	ctx := context.Background()
	env := testEnv(t, io.Discard)
	files, check, err := writeSharedCA(env.Dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := StartWorker(ctx, env, "cfssl-serve", "-ca", files.issuer, "-ca-key", files.key)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	addr, err := p.Expect("listening ", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	target := newCFSSLTarget(addr, p.Pid())
	client := loadClient(2)
	defer client.CloseIdleConnections()
	if _, err := target.load(ctx, client, Load{Callers: 2, Count: 3}); err != nil {
		t.Fatal(err)
	}
	if n, err := target.verify(ctx, check); err != nil || n != 3 {
		t.Fatalf("verified %d certificates: %v", n, err)
	}
	cert, err := target.fetch(ctx, nil, "", "", target.issued[0].proof)
	if err != nil {
		t.Fatal(err)
	}
	if err := check.leaf(cert, "someone-else"); err == nil {
		t.Fatalf("%s's certificate passed the check for someone-else", target.issued[0].name)
	}
}
