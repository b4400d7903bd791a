package xds

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/meshca/meshca/nodeapi"
)

// fakeSigner records SignCSR calls and answers what it is given.
type fakeSigner struct {
	mu    sync.Mutex
	calls []signCall
	resp  nodeapi.SignResponse
	err   error
}

type signCall struct {
	node, identity string
	presented      *x509.Certificate
	csr            []byte
}

func (f *fakeSigner) SignCSR(_ context.Context, node string, presented *x509.Certificate, identity string, csrDER []byte) (nodeapi.SignResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, signCall{node: node, identity: identity, presented: presented, csr: csrDER})
	return f.resp, f.err
}

func (f *fakeSigner) called() []signCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]signCall(nil), f.calls...)
}

// callSign calls SignCSR as grpc-go does: the method handler decodes the
// JSON body and runs the interceptor.
func (f *fixture) callSign(ctx context.Context, req nodeapi.SignRequest) (*nodeapi.SignResponse, error) {
	f.t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		f.t.Fatal(err)
	}
	out, err := unaryOf(nodeapi.FullSignMethod, f.s.signCSR)(nil, ctx, func(v any) error { return nodeapi.Codec{}.Unmarshal(body, v) }, f.s.authUnary)
	if err != nil {
		return nil, err
	}
	return out.(*nodeapi.SignResponse), nil
}

// TestSignCSR: SignCSR is served only on a node's authenticated connection;
// the server hands the Signer the bound node, the certificate the
// connection was made with, the identity and the DER, and maps its answer
// as Renew's.
func TestSignCSR(t *testing.T) {
	f := newFixture(t)
	f.give("web", nodeConfig{identities: []string{"web"}})
	req := nodeapi.SignRequest{Identity: "web", CSR: []byte("der")}

	if _, err := f.callSign(f.nodeConn("web").ctx, req); status.Code(err) != codes.Unimplemented {
		t.Fatalf("without a Signer: %v, want Unimplemented", err)
	}
	sig := &fakeSigner{resp: nodeapi.SignResponse{Identity: "web", Serial: "9"}}
	f.s.cfg.Signer = sig
	leaf := f.nodeCert("web")
	resp, err := f.callSign(f.connect("web", leaf).ctx, req)
	if err != nil || resp.Serial != "9" {
		t.Fatalf("sign: %+v, %v", resp, err)
	}
	if c := sig.called(); len(c) != 1 || c[0].node != "web" || c[0].identity != "web" || c[0].presented != leaf || !bytes.Equal(c[0].csr, []byte("der")) {
		t.Fatalf("Signer asked %+v", c)
	}

	t.Run("Signer refuses", func(t *testing.T) {
		sig.err = &JoinError{Code: codes.PermissionDenied, Message: "node is not an agent node"}
		defer func() { sig.err = nil }()
		_, err := f.callSign(f.nodeConn("web").ctx, req)
		if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "node is not an agent node" {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("Signer fails", func(t *testing.T) {
		sig.err = errors.New("store: disk on fire at /var/lib/meshca")
		defer func() { sig.err = nil }()
		_, err := f.callSign(f.nodeConn("web").ctx, req)
		if status.Code(err) != codes.Internal || strings.Contains(status.Convert(err).Message(), "/var/lib") {
			t.Fatalf("err %v", err)
		}
	})
	calls := len(sig.called())
	t.Run("no certificate", func(t *testing.T) {
		if _, err := f.callSign(tlsPeer(t.Context()), req); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("not on the join server", func(t *testing.T) {
		if _, err := f.s.joinTap(t.Context(), &tap.Info{FullMethodName: nodeapi.FullSignMethod}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("revoked node", func(t *testing.T) {
		f.remove("web")
		if _, err := f.callSign(f.nodeConn("web").ctx, req); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err %v", err)
		}
	})
	if n := len(sig.called()); n != calls {
		t.Fatalf("Signer called %d more times for refused calls", n-calls)
	}
}
