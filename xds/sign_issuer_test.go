package xds

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/nodeapi"
)

// fakeIdentities answers Identities with what it is given.
type fakeIdentities struct{ resp nodeapi.IdentitiesResponse }

func (f fakeIdentities) AgentIdentities(context.Context, string) (nodeapi.IdentitiesResponse, error) {
	return f.resp, nil
}

// TestIssuerSerialOnlyWhenAsked: SignCSR and Identities name the issuing
// CA only to a caller that sent nodeapi.IssuerHeader; an agent that
// predates the field (its codec refuses unknown fields) never gets it.
func TestIssuerSerialOnlyWhenAsked(t *testing.T) {
	f := newFixture(t)
	f.give("web", nodeConfig{identities: []string{"web"}})
	f.s.cfg.Signer = &fakeSigner{resp: nodeapi.SignResponse{Identity: "web", Serial: "9", IssuerSerial: "1f"}}
	f.s.cfg.Identities = fakeIdentities{nodeapi.IdentitiesResponse{Identities: []nodeapi.AssignedIdentity{{Name: "web"}}, IssuerSerial: "1f"}}
	leaf := f.nodeCert("web")
	for _, tc := range []struct {
		name string
		md   metadata.MD
		want string
	}{
		{"asked", metadata.Pairs(nodeapi.IssuerHeader, "1"), "1f"},
		{"not asked", nil, ""},
		{"other value", metadata.Pairs(nodeapi.IssuerHeader, "yes"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(f.connect("web", leaf).ctx, tc.md)
			signed, err := f.callSign(ctx, nodeapi.SignRequest{Identity: "web", CSR: []byte("der")})
			if err != nil {
				t.Fatal(err)
			}
			if signed.IssuerSerial != tc.want {
				t.Fatalf("SignCSR: issuer %q, want %q", signed.IssuerSerial, tc.want)
			}
			out, err := unaryOf(nodeapi.FullIdentitiesMethod, f.s.identities)(nil, ctx, func(v any) error { return nodeapi.Codec{}.Unmarshal([]byte("{}"), v) }, f.s.authUnary)
			if err != nil {
				t.Fatal(err)
			}
			ids := out.(*nodeapi.IdentitiesResponse)
			if ids.IssuerSerial != tc.want || len(ids.Identities) != 1 {
				t.Fatalf("Identities: %+v, want issuer %q", ids, tc.want)
			}
			for _, v := range []any{signed, ids} {
				b, _ := json.Marshal(v)
				if got := strings.Contains(string(b), "issuer_serial"); got != (tc.want != "") {
					t.Fatalf("answer %s: issuer_serial present %t, want %t", b, got, tc.want != "")
				}
			}
		})
	}
}
