package config_test

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/config"
)

// The xDS server certificate's names: loopback by default, xds.ip_sans and
// the listen address; an IP in dns_names is pointed to xds.ip_sans.
func TestServerIPSANs(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantIPs []string
		wantDNS []string
		wantErr string
	}{
		{name: "default", yaml: "", wantIPs: []string{"127.0.0.1", "::1"}, wantDNS: []string{"localhost"}},
		{name: "listen address added", yaml: "xds: {listen: 10.0.0.5:6565}", wantIPs: []string{"127.0.0.1", "::1", "10.0.0.5"}, wantDNS: []string{"localhost"}},
		{name: "unspecified listen not added", yaml: "xds: {listen: 0.0.0.0:6565, ip_sans: [10.0.0.5]}", wantIPs: []string{"10.0.0.5"}, wantDNS: []string{"localhost"}},
		{name: "lists replace the defaults", yaml: "xds: {dns_names: [meshca.internal], ip_sans: []}", wantIPs: []string{"127.0.0.1"}, wantDNS: []string{"meshca.internal"}},
		{name: "ip in dns_names", yaml: "xds: {dns_names: [127.0.0.1]}", wantErr: `xds.dns_names: "127.0.0.1" is an IP address, not a DNS name: list it under xds.ip_sans`},
		{name: "ip in admin dns_names", yaml: "admin: {dns_names: ['::1']}", wantErr: `admin.dns_names: "::1" is an IP address`},
		{name: "bad ip", yaml: "xds: {ip_sans: [not-an-ip]}", wantErr: `xds.ip_sans: "not-an-ip" is not a unicast IP address`},
		{name: "unspecified ip", yaml: "xds: {ip_sans: [0.0.0.0]}", wantErr: `xds.ip_sans: "0.0.0.0"`},
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
			var got []string
			for _, ip := range c.ServerIPs() {
				got = append(got, ip.String())
			}
			if !slices.Equal(got, tt.wantIPs) || !slices.Equal(c.XDS.DNSNames, tt.wantDNS) {
				t.Fatalf("IPs %v DNS %v, want %v %v", got, c.XDS.DNSNames, tt.wantIPs, tt.wantDNS)
			}
			for _, ip := range c.ServerIPs() {
				if ip.To16() == nil || ip.Equal(net.IPv4zero) {
					t.Fatalf("bad IP %v", ip)
				}
			}
		})
	}
}

// Nodes are told an address the certificate covers, also when meshca
// listens on every address.
func TestAdvertisedXDS(t *testing.T) {
	tests := []struct {
		name, yaml, bound, want string
	}{
		{"one address", "", "127.0.0.1:6565", "127.0.0.1:6565"},
		{"every address, a DNS name", "xds: {dns_names: [localhost, meshca.internal]}", "0.0.0.0:6565", "meshca.internal:6565"},
		{"every address, an IP", "xds: {ip_sans: [127.0.0.1, 10.0.0.5]}", "[::]:6565", "10.0.0.5:6565"},
		{"every address, loopback only", "", "0.0.0.0:6565", "127.0.0.1:6565"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.AdvertisedXDS(tt.bound); got != tt.want {
				t.Fatalf("AdvertisedXDS(%s) = %s, want %s", tt.bound, got, tt.want)
			}
		})
	}
}
