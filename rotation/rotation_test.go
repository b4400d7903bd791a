package rotation_test

import (
	"testing"
	"time"

	"github.com/meshca/meshca/rotation"
)

func TestRenewAt(t *testing.T) {
	nb := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		notAfter time.Time
		fraction float64
		want     time.Time
	}{
		{"half of an hour", nb.Add(time.Hour), 0.5, nb.Add(30 * time.Minute)},
		{"two thirds of a day", nb.Add(24 * time.Hour), 2.0 / 3, nb.Add(16 * time.Hour)},
		{"zero falls back to half", nb.Add(time.Hour), 0, nb.Add(30 * time.Minute)},
		{"one falls back to half", nb.Add(time.Hour), 1, nb.Add(30 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rotation.RenewAt(nb, tt.notAfter, tt.fraction); !got.Equal(tt.want) {
				t.Fatalf("RenewAt = %s, want %s", got, tt.want)
			}
			at := rotation.RenewAt(nb, tt.notAfter, tt.fraction)
			if rotation.Due(at.Add(-time.Nanosecond), nb, tt.notAfter, tt.fraction) {
				t.Fatal("due before the renewal time")
			}
			if !rotation.Due(at, nb, tt.notAfter, tt.fraction) {
				t.Fatal("not due at the renewal time")
			}
		})
	}
}
