package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/meshca/meshca/nodeapi"
)

// callJoin calls Join as grpc-go does: the method handler decodes the JSON
// body and runs the interceptor.
func (f *fixture) callJoin(ctx context.Context, req nodeapi.JoinRequest) (*nodeapi.JoinResponse, error) {
	return callNodeAPI(ctx, f, nodeapi.FullJoinMethod, f.s.join, req)
}

// callRenew calls Renew the same way.
func (f *fixture) callRenew(ctx context.Context, req nodeapi.RenewRequest) (*nodeapi.JoinResponse, error) {
	return callNodeAPI(ctx, f, nodeapi.FullRenewMethod, f.s.renew, req)
}

func callNodeAPI[Req any](ctx context.Context, f *fixture, method string, fn func(context.Context, *Req) (*nodeapi.JoinResponse, error), req Req) (*nodeapi.JoinResponse, error) {
	f.t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		f.t.Fatal(err)
	}
	out, err := unary(method, fn)(nil, ctx, func(v any) error { return nodeapi.Codec{}.Unmarshal(body, v) }, f.s.authUnary)
	if err != nil {
		return nil, err
	}
	return out.(*nodeapi.JoinResponse), nil
}

// TestJoin: Join needs no certificate; the server checks the CSR's PEM
// framing, hands node, token and DER to the Joiner, and maps its answer:
// a JoinError's code and message as they are, anything else as Internal
// with a message that reveals nothing.
func TestJoin(t *testing.T) {
	csr, der := csrPEM(t)
	answer := nodeapi.JoinResponse{Node: "web", ChainPEM: "chain", Serial: "42", NotAfter: time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)}
	tests := []struct {
		name     string
		csr      string
		joinErr  error
		code     codes.Code
		msg      string // in the answer
		hidden   string // never in the answer
		reachesJ bool   // the Joiner is called
	}{
		{name: "joined", csr: csr, code: codes.OK, reachesJ: true},
		{name: "CSR with surrounding space", csr: "\n" + csr + "\n \t\r\n", code: codes.OK, reachesJ: true},
		{name: "CSR not PEM", csr: "MIIB...", code: codes.InvalidArgument, msg: "csr_pem"},
		{name: "certificate instead of CSR", csr: strings.ReplaceAll(csr, "CERTIFICATE REQUEST", "CERTIFICATE"), code: codes.InvalidArgument, msg: "csr_pem"},
		{name: "two CSRs", csr: csr + csr, code: codes.InvalidArgument, msg: "csr_pem"},
		{name: "text after the CSR", csr: csr + "trailing", code: codes.InvalidArgument, msg: "csr_pem"},
		{name: "token refused", csr: csr, joinErr: &JoinError{Code: codes.PermissionDenied, Message: "join token is not valid"},
			code: codes.PermissionDenied, msg: "join token is not valid", reachesJ: true},
		{name: "rate limited", csr: csr, joinErr: fmt.Errorf("join: %w", &JoinError{Code: codes.ResourceExhausted, Message: "too many joins"}),
			code: codes.ResourceExhausted, msg: "too many joins", reachesJ: true},
		{name: "internal error", csr: csr, joinErr: errors.New("store: token hash 9f86d081 did not match"),
			code: codes.Internal, msg: "server log", hidden: "9f86d081", reachesJ: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.joiner.answer(answer, tt.joinErr)
			// No peer at all: Join is the one call that needs no certificate.
			resp, err := f.callJoin(t.Context(), nodeapi.JoinRequest{Node: "web", Token: "one-time", CSRPEM: tt.csr})
			if status.Code(err) != tt.code {
				t.Fatalf("err %v, want %v", err, tt.code)
			}
			calls := f.joiner.called()
			if reached := len(calls) == 1; reached != tt.reachesJ {
				t.Fatalf("Joiner called %d times", len(calls))
			}
			st := f.s.Stats()
			if tt.code == codes.OK {
				if resp == nil || !reflect.DeepEqual(*resp, answer) {
					t.Fatalf("answer %+v, want %+v", resp, answer)
				}
				if c := calls[0]; c.method != "join" || c.node != "web" || c.token != "one-time" || !bytes.Equal(c.csr, der) {
					t.Fatalf("Joiner asked %s for %q with token %q and a CSR of %d bytes", c.method, c.node, c.token, len(c.csr))
				}
				if st.Joins != 1 || st.JoinsRefused != 0 {
					t.Fatalf("joins %d, refused %d", st.Joins, st.JoinsRefused)
				}
				return
			}
			msg := status.Convert(err).Message()
			if !strings.Contains(msg, tt.msg) || (tt.hidden != "" && strings.Contains(msg, tt.hidden)) {
				t.Errorf("message %q", msg)
			}
			if st.Joins != 0 || st.JoinsRefused != 1 {
				t.Errorf("joins %d, refused %d; want 0, 1", st.Joins, st.JoinsRefused)
			}
			if !tt.reachesJ && f.denialsLike("node.join", "web", "csr_pem") != 1 {
				t.Errorf("malformed CSR not audited: %v", f.audit.all())
			}
		})
	}
}

// TestJoinAnswersNodesAlike: whether the node exists, was revoked or was
// never registered, the server's answer is the Joiner's and nothing more:
// it consults no node state of its own, so an unauthenticated caller
// cannot tell the cases apart.
func TestJoinAnswersNodesAlike(t *testing.T) {
	csr, _ := csrPEM(t)
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"token refused", &JoinError{Code: codes.PermissionDenied, Message: "join token is not valid, expired or already used; ask for a new one with meshca node token"}},
		{"revoked, unmapped", fmt.Errorf("wrapped: %w", ErrNodeRevoked)},
	} {
		joinErr := tt.err
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.give("web", nodeConfig{identities: []string{"web"}})
			f.give("gone", nodeConfig{})
			f.remove("gone")
			f.joiner.answer(nodeapi.JoinResponse{}, joinErr)
			var first *status.Status
			for _, node := range []string{"web", "gone", "nobody"} {
				_, err := f.callJoin(t.Context(), nodeapi.JoinRequest{Node: node, Token: "guess", CSRPEM: csr})
				st := status.Convert(err)
				if st.Code() == codes.OK {
					t.Fatalf("%s: joined", node)
				}
				if first == nil {
					first = st
				} else if st.Code() != first.Code() || st.Message() != first.Message() {
					t.Fatalf("%s answered %v %q, web %v %q", node, st.Code(), st.Message(), first.Code(), first.Message())
				}
			}
			// A JoinError is answered as it is; any other error says
			// nothing of its cause.
			var je *JoinError
			if errors.As(joinErr, &je) {
				if first.Code() != je.Code || first.Message() != je.Message {
					t.Fatalf("answer %v %q, want the JoinError's", first.Code(), first.Message())
				}
			} else if first.Code() != codes.Internal || strings.Contains(first.Message(), "revoked") || strings.Contains(first.Message(), "unknown") {
				t.Fatalf("answer %v %q tells why", first.Code(), first.Message())
			}
		})
	}
}

// TestRenew: Renew renews the connection's node, whatever the body says;
// without a certificate, or for a revoked node, the Joiner is never asked.
func TestRenew(t *testing.T) {
	csr, der := csrPEM(t)
	f := newFixture(t)
	f.give("web", nodeConfig{identities: []string{"web"}})
	f.joiner.answer(nodeapi.JoinResponse{Node: "web", Serial: "7"}, nil)

	resp, err := f.callRenew(f.nodeConn("web").ctx, nodeapi.RenewRequest{CSRPEM: csr})
	if err != nil || resp.Serial != "7" {
		t.Fatalf("renew: %+v, %v", resp, err)
	}
	if c := f.joiner.called(); len(c) != 1 || c[0].method != "renew" || c[0].node != "web" || !bytes.Equal(c[0].csr, der) {
		t.Fatalf("Joiner asked %+v", c)
	}
	if f.s.Stats().Joins != 1 {
		t.Fatalf("joins = %d", f.s.Stats().Joins)
	}

	t.Run("malformed CSR", func(t *testing.T) {
		_, err := f.callRenew(f.nodeConn("web").ctx, nodeapi.RenewRequest{CSRPEM: "not a CSR"})
		if status.Code(err) != codes.InvalidArgument || len(f.joiner.called()) != 1 {
			t.Fatalf("err %v, Joiner calls %d", err, len(f.joiner.called()))
		}
		if f.denialsLike("node.renew", "web", "csr_pem") != 1 {
			t.Fatalf("not audited: %v", f.audit.all())
		}
	})
	t.Run("Joiner refuses", func(t *testing.T) {
		f.joiner.answer(nodeapi.JoinResponse{}, &JoinError{Code: codes.FailedPrecondition, Message: "node certificate is not due"})
		_, err := f.callRenew(f.nodeConn("web").ctx, nodeapi.RenewRequest{CSRPEM: csr})
		if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "node certificate is not due" {
			t.Fatalf("err %v", err)
		}
	})
	calls := len(f.joiner.called())
	t.Run("no certificate", func(t *testing.T) {
		_, err := f.callRenew(tlsPeer(t.Context()), nodeapi.RenewRequest{CSRPEM: csr})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("revoked node", func(t *testing.T) {
		f.remove("web")
		before := f.s.Stats().Denied
		_, err := f.callRenew(f.nodeConn("web").ctx, nodeapi.RenewRequest{CSRPEM: csr})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), `node "web" was revoked`) {
			t.Fatalf("err %v", err)
		}
		if f.s.Stats().Denied != before+1 || f.denialsLike(ActionAuth, "web", nodeapi.FullRenewMethod) != 1 {
			t.Fatalf("refusal not counted or audited: %v", f.audit.all())
		}
	})
	t.Run("handler reached without a bound node", func(t *testing.T) {
		if _, err := f.s.renew(t.Context(), &nodeapi.RenewRequest{CSRPEM: csr}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err %v", err)
		}
	})
	if n := len(f.joiner.called()); n != calls {
		t.Fatalf("Joiner called %d more times for refused renewals", n-calls)
	}
}

// TestJoinServerKnowsOnlyJoin: the server for peers without a node
// certificate refuses every other method from its headers, counted.
func TestJoinServerKnowsOnlyJoin(t *testing.T) {
	f := newFixture(t)
	for _, m := range []string{nodeapi.FullRenewMethod, "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
		"/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets", "/" + nodeapi.Service + "/join", nodeapi.FullJoinMethod + "/"} {
		if _, err := f.s.joinTap(t.Context(), &tap.Info{FullMethodName: m}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: %v, want Unauthenticated", m, err)
		}
	}
	if n := f.s.Stats().Unauthenticated; n != 5 {
		t.Errorf("unauthenticated counter = %d, want 5", n)
	}
	if _, err := f.s.joinTap(t.Context(), &tap.Info{FullMethodName: nodeapi.FullJoinMethod}); err != nil {
		t.Errorf("Join refused: %v", err)
	}
	// Join is also served on the nodes' server: its interceptor lets it
	// through without a certificate, and nothing else.
	ran := false
	if _, err := f.s.authUnary(t.Context(), nil, &grpc.UnaryServerInfo{FullMethod: nodeapi.FullJoinMethod}, func(context.Context, any) (any, error) { ran = true; return nil, nil }); err != nil || !ran {
		t.Errorf("Join on the nodes' server: %v", err)
	}
}
