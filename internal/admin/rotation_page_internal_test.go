package admin

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
)

// TestStatusPageRotationLine renders the rotation line of the status page
// for each phase, with the bound it shows.
func TestStatusPageRotationLine(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name string
		rot  api.CARotation
		want []string
	}{
		{"publishing", api.CARotation{Kind: "root", Phase: "publishing", NodesConnected: 3, NodesAcked: 1, RetireAfter: &at, WaitingFor: "2 of 3 connected node(s)"},
			[]string{"leaves are re-issued after the switch", "nodes acknowledged 1 of 3", "waiting for 2 of 3 connected node(s)", "switches by 2030-01-02 03:04:05 UTC"}},
		{"reissuing", api.CARotation{Kind: "intermediate", Phase: "reissuing", Emergency: true, Leaves: 10, Reissued: 7, ReissueFailed: 1, RetireAfter: &at},
			[]string{"emergency intermediate rotation", "re-issued <span class=\"progress\">7 of 10</span> leaves (1 failed)", "ends by 2030-01-02 03:04:05 UTC"}},
		{"no bound", api.CARotation{Kind: "intermediate", Phase: "reissuing", Leaves: 2},
			[]string{"re-issued <span class=\"progress\">0 of 2</span> leaves"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var view statusView
			view.CA.Rotation = &tc.rot
			var buf bytes.Buffer
			if err := statusTmpl.Execute(&buf, view); err != nil {
				t.Fatal(err)
			}
			page := buf.String()
			for _, w := range tc.want {
				if !strings.Contains(page, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			if tc.rot.RetireAfter == nil && (strings.Contains(page, "ends by") || strings.Contains(page, "switches by")) {
				t.Error("page shows a bound the rotation does not have")
			}
		})
	}
}
