package cli

import (
	"runtime/debug"
	"testing"
)

func TestVersionLine(t *testing.T) {
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"stamped", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "7860f6f1c2ab"}, {Key: "vcs.time", Value: "2026-12-02T04:10:45Z"}, {Key: "vcs.modified", Value: "true"}}},
			"meshca v1.2.0, commit 7860f6f1c2ab (2026-12-02T04:10:45Z, modified), go1.26.8"},
		{"clean tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}}},
			"meshca (devel), commit abc, go1.26.8"},
		{"not stamped", &debug.BuildInfo{GoVersion: "go1.26.8"},
			"meshca (devel), commit unknown (built without VCS information, e.g. -buildvcs=false or outside a git checkout), go1.26.8"},
		{"no build info", nil, "meshca (no build information)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := versionLine(tt.bi); got != tt.want {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}
