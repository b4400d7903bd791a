package ca_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

// A server that clients reach by IP address gets exactly the IP SANs asked
// for, and the certificate verifies for those addresses and no other.
func TestIssueIPSANs(t *testing.T) {
	c, _ := newCA(t, ca.ECDSAP256, clock.NewFake(testNow))
	id := spiffeid.RequireFromPath(td, "/meshca")
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.1.2.3")}
	is, err := c.Issue(context.Background(), ca.Request{ID: id, DNSNames: []string{"localhost"}, IPAddresses: ips, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(is.Cert.IPAddresses, ips, net.IP.Equal) {
		t.Fatalf("IP SANs %v, want %v", is.Cert.IPAddresses, ips)
	}
	verifyLeaf(t, c, is, testNow)
	for _, host := range []string{"127.0.0.1", "::1", "10.1.2.3", "localhost"} {
		if err := is.Cert.VerifyHostname(host); err != nil {
			t.Errorf("VerifyHostname(%s): %v", host, err)
		}
	}
	if err := is.Cert.VerifyHostname("10.1.2.4"); err == nil {
		t.Error("the certificate verifies for an address it was not issued for")
	}

	for _, tt := range []struct {
		name string
		ips  []net.IP
	}{
		{"unspecified v4", []net.IP{net.IPv4zero}},
		{"unspecified v6", []net.IP{net.IPv6unspecified}},
		{"multicast", []net.IP{net.ParseIP("224.0.0.1")}},
		{"malformed", []net.IP{{1, 2, 3}}},
		{"twice", []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("127.0.0.1").To4()}},
		{"too many", make([]net.IP, ca.MaxIPAddresses+1)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Issue(context.Background(), ca.Request{ID: id, IPAddresses: tt.ips, TTL: time.Hour})
			if !errors.Is(err, ca.ErrInvalidRequest) {
				t.Fatalf("err = %v, want ErrInvalidRequest", err)
			}
		})
	}
}
