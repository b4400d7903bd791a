//go:build unix

package app

import (
	"syscall"
	"testing"
)

func TestRaiseFileLimit(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })
	if orig.Max < 512 {
		t.Skipf("hard descriptor limit %d too small to lower and raise", orig.Max)
	}
	low := orig
	low.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	soft, hard, err := raiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var now syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now)
	t.Logf("soft descriptor limit 256 -> %d (hard %d)", now.Cur, now.Max)
	if soft != uint64(orig.Max) || hard != uint64(orig.Max) || uint64(now.Cur) != uint64(orig.Max) {
		t.Errorf("after raising: reported %d/%d, in force %d, want the hard limit %d", soft, hard, now.Cur, orig.Max)
	}
}

func TestConnectionBudget(t *testing.T) {
	tests := []struct {
		name       string
		configured int
		fdLimit    uint64
		want       int
	}{
		{"ample limit keeps the setting", 10000, 1 << 20, 10000},
		{"limit leaves the reserve", 10000, 4096, 4096 - fdReserve},
		{"small limit keeps half", 10000, 300, 150},
		{"unknown limit", 500, 0, 500},
		{"unlimited", 500, 1 << 62, 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := connectionBudget(tt.configured, tt.fdLimit); got != tt.want {
				t.Errorf("connectionBudget(%d, %d) = %d, want %d", tt.configured, tt.fdLimit, got, tt.want)
			}
		})
	}
}
