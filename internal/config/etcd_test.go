package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/config"
)

func TestEtcdSection(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr []string // substrings; none means valid
		check   func(t *testing.T, c config.Config)
	}{
		{
			name: "absent: bbolt, with the etcd defaults filled",
			yaml: "",
			check: func(t *testing.T, c config.Config) {
				if c.Store.Etcd.Enabled() || c.Store.Etcd.Prefix != "/meshca" || c.Store.Etcd.DialTimeout.D() != 5*time.Second {
					t.Fatalf("store.etcd = %+v", c.Store.Etcd)
				}
			},
		},
		{
			name: "full section",
			yaml: "store:\n  etcd:\n    endpoints: [10.0.0.1:2379, 'etcd-2.internal:2379']\n    prefix: /prod/meshca\n    dial_timeout: 2s\n    tls: {ca: /etc/meshca/etcd-ca.pem, cert: /etc/meshca/etcd.pem, key: /etc/meshca/etcd-key.pem}\n",
			check: func(t *testing.T, c config.Config) {
				e := c.Store.Etcd
				if !e.Enabled() || len(e.Endpoints) != 2 || e.Prefix != "/prod/meshca" || e.DialTimeout.D() != 2*time.Second || e.TLS.Key != "/etc/meshca/etcd-key.pem" {
					t.Fatalf("store.etcd = %+v", e)
				}
			},
		},
		{name: "unknown key named by its path", yaml: "store:\n  etcd:\n    endpoint: [a:1]\n", wantErr: []string{`unknown key "store.etcd.endpoint"`}},
		{name: "unknown tls key", yaml: "store:\n  etcd:\n    tls: {cafile: x}\n", wantErr: []string{`unknown key "store.etcd.tls.cafile"`}},
		{
			name:    "endpoint with a scheme",
			yaml:    "store:\n  etcd:\n    endpoints: ['https://10.0.0.1:2379']\n",
			wantErr: []string{`store.etcd.endpoints: "https://10.0.0.1:2379" is not HOST:PORT`},
		},
		{name: "endpoint without port", yaml: "store:\n  etcd:\n    endpoints: [etcd1]\n", wantErr: []string{`"etcd1" is not HOST:PORT`}},
		{name: "relative prefix", yaml: "store:\n  etcd:\n    endpoints: [a:1]\n    prefix: meshca\n", wantErr: []string{`store.etcd.prefix: "meshca"`}},
		{name: "root prefix", yaml: "store:\n  etcd:\n    endpoints: [a:1]\n    prefix: /\n", wantErr: []string{`store.etcd.prefix: "/"`}},
		{
			name:    "cert without key, dial timeout out of range: both named",
			yaml:    "store:\n  etcd:\n    endpoints: [a:1]\n    dial_timeout: 1ms\n    tls: {cert: c.pem}\n",
			wantErr: []string{"store.etcd.tls: set both cert and key", "store.etcd.dial_timeout: 1ms is out of range"},
		},
		{name: "tls without endpoints", yaml: "store:\n  etcd:\n    tls: {ca: ca.pem}\n", wantErr: []string{"store.etcd.endpoints is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.yaml))
			if err == nil {
				err = c.Validate()
			}
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				tt.check(t, c)
				return
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
