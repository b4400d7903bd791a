package config_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/config"
)

// xds.advertise: what nodes are told and what replicas register; required
// on etcd when xds.listen is on every address; its host goes on the server
// certificate.
func TestXDSAdvertise(t *testing.T) {
	const etcd = "store: {etcd: {endpoints: [127.0.0.1:2379]}}\n"
	tests := []struct {
		name     string
		yaml     string
		wantAddr string
		wantIPs  []string
		wantDNS  []string
		wantErr  string
	}{
		{name: "a name", yaml: "xds: {listen: 0.0.0.0:6565, advertise: meshca-1.internal:6565}\n" + etcd,
			wantAddr: "meshca-1.internal:6565", wantIPs: []string{"127.0.0.1", "::1"}, wantDNS: []string{"localhost", "meshca-1.internal"}},
		{name: "an IP", yaml: "xds: {listen: '[::]:6565', advertise: '10.0.0.7:6565'}\n" + etcd,
			wantAddr: "10.0.0.7:6565", wantIPs: []string{"127.0.0.1", "::1", "10.0.0.7"}, wantDNS: []string{"localhost"}},
		{name: "one address on etcd needs none", yaml: "xds: {listen: 10.0.0.5:6565}\n" + etcd,
			wantAddr: "10.0.0.5:6565", wantIPs: []string{"127.0.0.1", "::1", "10.0.0.5"}, wantDNS: []string{"localhost"}},
		{name: "every address on bbolt keeps the derived one", yaml: "xds: {listen: 0.0.0.0:6565, dns_names: [meshca.internal]}",
			wantAddr: "meshca.internal:6565", wantIPs: []string{"127.0.0.1", "::1"}, wantDNS: []string{"meshca.internal"}},
		{name: "every address on etcd without advertise", yaml: "xds: {listen: 0.0.0.0:6565}\n" + etcd,
			wantErr: `xds.advertise: must be set when xds.listen "0.0.0.0:6565" is on every address and the store is etcd`},
		{name: "no host on etcd without advertise", yaml: "xds: {listen: ':6565'}\n" + etcd, wantErr: "pass --xds-advertise HOST:PORT"},
		{name: "wildcard advertise", yaml: "xds: {advertise: '0.0.0.0:6565'}", wantErr: `xds.advertise: "0.0.0.0:6565" is not an address nodes can dial`},
		{name: "no port", yaml: "xds: {advertise: meshca.internal}", wantErr: `xds.advertise: "meshca.internal" is not host:port`},
		{name: "port 0", yaml: "xds: {advertise: 'meshca.internal:0'}", wantErr: `is not host:port with a port in 1-65535`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Validate = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.AdvertisedXDS(c.XDS.Listen); got != tt.wantAddr {
				t.Errorf("AdvertisedXDS = %q, want %q", got, tt.wantAddr)
			}
			var ips []string
			for _, ip := range c.ServerIPs() {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.wantIPs) || !slices.Equal(c.ServerDNSNames(), tt.wantDNS) {
				t.Errorf("certificate IPs %v DNS %v, want %v %v", ips, c.ServerDNSNames(), tt.wantIPs, tt.wantDNS)
			}
		})
	}
}
