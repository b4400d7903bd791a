package app_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// Terminal controls an outsider may put in a node name, a NACK or an
// access-log entry: clear screen, cursor home, a window title (OSC), an
// 8-bit CSI, a carriage return that overwrites the line, and a
// right-to-left override that reorders what the reader sees.
const hostile = "\x1b[2J\x1b[Hall good\r\x1b]0;owned\x07\u009b31m\u202eevil"

// badBytes reports the first byte or character in out that a terminal
// would act on: controls other than newline and tab, DEL, C1 controls,
// bidirectional overrides, invalid UTF-8.
func badBytes(out string) (string, bool) {
	for i, r := range out {
		switch {
		case r == '\n' || r == '\t':
		case r == utf8.RuneError:
			return out[max(0, i-20):i], true
		case r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069:
			return out[max(0, i-20):i], true
		}
	}
	return "", false
}

// TestHostileTextIsEscapedInTheCLI: text from outside reaches every text
// output of the CLI escaped, and JSON output as JSON escapes it.
func TestHostileTextIsEscapedInTheCLI(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	cert := m.joined("live", "web")
	conn := m.dial(cert)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// An unauthenticated Join naming a node with controls, and one with a
	// 300-character name.
	_, csrPEM := testkit.NewCSR(t)
	anon := m.dial(nil)
	long := strings.Repeat("n", 300)
	for _, name := range []string{hostile, long} {
		var resp nodeapi.JoinResponse
		if err := anon.Invoke(ctx, nodeapi.FullJoinMethod, &nodeapi.JoinRequest{Node: name, Token: "x", CSRPEM: csrPEM}, &resp, grpc.ForceCodec(nodeapi.Codec{})); err == nil {
			t.Fatal("join with a made-up node and token succeeded")
		}
	}
	// A NACK whose error_detail carries controls.
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "live"}, TypeUrl: resource.ClusterType,
		ErrorDetail: &status.Status{Code: 3, Message: "rejected: " + hostile}}); err != nil {
		t.Fatal(err)
	}
	// An access-log entry with controls in its authority and path.
	als, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := als.Send(&accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &core.Node{Id: "live"}, LogName: "meshca"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogdata.HTTPAccessLogEntry{{
			CommonProperties: &accesslogdata.AccessLogCommon{StartTime: timestamppb.Now()},
			Request:          &accesslogdata.HTTPRequestProperties{RequestMethod: core.RequestMethod_GET, Authority: hostile, Path: "/" + hostile},
			Response:         &accesslogdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
		}}}},
	}); err != nil {
		t.Fatal(err)
	}
	// The server answers the close once it has filed the entry.
	if _, err := als.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	// The NACK is recorded by the ADS stream's goroutine, which announces
	// nothing: look for it, within a bound.
	var n api.Node
	if !pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
		m.admin("GET", api.PathNodes+"/live", nil, &n, http.StatusOK)
		return n.Connection.NACKs > 0
	}) {
		t.Fatalf("NACK not recorded: nacks=%d", n.Connection.NACKs)
	}
	var logs []api.LogEntry
	m.admin("GET", api.PathLogs+"?node=live", nil, &logs, http.StatusOK)
	if len(logs) == 0 {
		t.Fatal("access log not filed")
	}

	run := func(args ...string) (string, string) {
		out, errOut, err := m.cli(args...)
		if err != nil && !strings.Contains(strings.Join(args, " "), "ghost") {
			t.Fatalf("meshca %s: %v %s", strings.Join(args, " "), err, errOut)
		}
		return out, errOut
	}
	escaped := `\x1b[2J\x1b[Hall good\r\x1b]0;owned\x07\u009b31m\u202eevil`
	tests := []struct {
		args []string
		want string // an escaped form that must appear ("" when the command shows none)
	}{
		{[]string{"audit", "list"}, escaped},
		{[]string{"status"}, `\x1b[2J\x1b[Hall good`},
		{[]string{"node", "list"}, ""},
		{[]string{"node", "show", "live"}, escaped},
		{[]string{"logs"}, escaped},
		{[]string{"logs", "--node", "live"}, escaped},
		{[]string{"identity", "list"}, ""},
		{[]string{"identity", "show", "web"}, ""},
		{[]string{"mesh", "history"}, ""},
		{[]string{"node", "show", "ghost" + hostile}, ""}, // the error on stderr quotes the name
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, errOut := run(tt.args...)
			for what, s := range map[string]string{"stdout": out, "stderr": errOut} {
				if ctx, bad := badBytes(s); bad {
					t.Errorf("%s holds a raw control after %q:\n%q", what, ctx, s)
				}
			}
			if tt.want != "" && !strings.Contains(out, tt.want) {
				t.Errorf("output lacks the escaped text %s:\n%s", tt.want, out)
			}
		})
	}

	// The refused 300-character name is clipped in the record, and the
	// columns before DETAIL stay narrow.
	out, _ := run("audit", "list")
	lines := strings.Split(out, "\n")
	detailAt := strings.Index(lines[0], "DETAIL")
	if detailAt < 0 || detailAt > 250 {
		t.Errorf("audit list: DETAIL column starts at %d, want at most 250:\n%s", detailAt, lines[0])
	}
	if strings.Contains(out, long) {
		t.Error("the 300-character refused name is shown whole")
	}
	t.Logf("audit list: columns before DETAIL are %d characters wide with a refused 300-character name", detailAt)

	// JSON output is unchanged: JSON escapes C0 controls itself.
	js, _ := run("-o", "json", "node", "show", "live")
	if strings.ContainsAny(js, "\x1b\r\a") || !strings.Contains(js, `\u001b[2J\u001b[Hall good\r\u001b]0;owned\u0007`) {
		t.Errorf("node show -o json: %s", js)
	}
}
