package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/config"
)

func TestValidateXDSLimits(t *testing.T) {
	tests := []struct {
		name string
		edit func(*config.XDS)
		key  string // named in the error; empty: valid
	}{
		{"defaults", func(*config.XDS) {}, ""},
		{"read from YAML keys", nil, ""},
		{"too few connections", func(x *config.XDS) { x.MaxConnections = 8 }, "xds.max_connections:"},
		{"more unauthenticated than in total", func(x *config.XDS) { x.MaxConnections = 100; x.MaxUnauthenticatedConnections = 128 }, "xds.max_unauthenticated_connections:"},
		{"unauthenticated over 1024", func(x *config.XDS) { x.MaxUnauthenticatedConnections = 2000 }, "xds.max_unauthenticated_connections:"},
		{"per address over the total", func(x *config.XDS) { x.MaxUnauthenticatedPerAddress = 200 }, "xds.max_unauthenticated_per_address:"},
		{"per address zero", func(x *config.XDS) { x.MaxUnauthenticatedPerAddress = 0 }, "xds.max_unauthenticated_per_address:"},
		{"idle timeout too short", func(x *config.XDS) { x.IdleTimeout = config.Duration(time.Millisecond) }, "xds.idle_timeout:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if tt.edit == nil {
				var err error
				c, err = config.Parse([]byte("xds:\n  max_connections: 500\n  max_unauthenticated_connections: 50\n  max_unauthenticated_per_address: 5\n  idle_timeout: 2m\n"))
				if err != nil {
					t.Fatal(err)
				}
				if c.XDS.MaxConnections != 500 || c.XDS.MaxUnauthenticatedConnections != 50 || c.XDS.MaxUnauthenticatedPerAddress != 5 || c.XDS.IdleTimeout.D() != 2*time.Minute {
					t.Fatalf("parsed %+v", c.XDS)
				}
			} else {
				tt.edit(&c.XDS)
			}
			err := c.Validate()
			switch {
			case tt.key == "" && err != nil:
				t.Fatalf("valid settings refused: %v", err)
			case tt.key != "" && (err == nil || !strings.Contains(err.Error(), tt.key)):
				t.Fatalf("err = %v, want it to name %s", err, tt.key)
			}
		})
	}
}
