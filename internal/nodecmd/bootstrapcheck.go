package nodecmd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/meshca/meshca/nodeapi"
)

// checkServerName makes sure a bootstrap of this kind will verify the
// server just joined, before anything is written. A proxyless gRPC node
// (grpc-go) verifies the host of server_uri against meshca's certificate,
// with the issuing CAs it is given (grpc-bootstrap.json's channel
// credentials name meshca-issuers.pem); Envoy's bootstrap checks meshca's
// SPIFFE ID instead, so other kinds need no host name. The check dials
// server as grpc-go will, with issuersPEM as the only roots.
func checkServerName(ctx context.Context, server, node, kind, issuersPEM string) error {
	if kind != nodeapi.KindGRPC {
		return nil
	}
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		return fmt.Errorf("--server %q is not host:port", server)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(issuersPEM)) {
		return errors.New("the issuing CAs meshca sent hold no certificate; nothing written")
	}
	var seen *x509.Certificate
	d := tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 10 * time.Second},
		Config: &tls.Config{
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{"h2"},
			// The verification below is crypto/tls's own (chain to the
			// issuing CAs, then the host name or IP), done by hand only to keep
			// the certificate for the message when it fails.
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				inter := x509.NewCertPool()
				for i, der := range raw {
					c, err := x509.ParseCertificate(der)
					if err != nil {
						return err
					}
					if i == 0 {
						seen = c
					} else {
						inter.AddCert(c)
					}
				}
				if seen == nil {
					return errors.New("server presented no certificate")
				}
				_, err := seen.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host})
				return err
			},
		},
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", server)
	if err == nil {
		conn.Close()
		return nil
	}
	var hostErr x509.HostnameError
	if !errors.As(err, &hostErr) {
		return fmt.Errorf("checking that grpc-go on this node can verify meshca at %s: %w; nothing written (get a new join token with: meshca node token %s)", server, err, node)
	}
	names := "no DNS name or IP address"
	if seen != nil {
		names = certNames(seen)
	}
	key := "xds.dns_names"
	if net.ParseIP(host) != nil {
		key = "xds.ip_sans"
	}
	return fmt.Errorf("grpc-go would refuse meshca at %s: its xDS certificate covers %s, not %s; nothing written. "+
		"Either rerun with a --server that names one of those, or add %s to %s in meshca's configuration and restart it; "+
		"then get a new join token with: meshca node token %s", server, names, host, host, key, node)
}

// certNames lists the DNS names and IP addresses of a certificate.
func certNames(c *x509.Certificate) string {
	var names []string
	for _, n := range c.DNSNames {
		names = append(names, "DNS:"+n)
	}
	for _, ip := range c.IPAddresses {
		names = append(names, "IP:"+ip.String())
	}
	if len(names) == 0 {
		return "no DNS name or IP address"
	}
	return strings.Join(names, ", ")
}

// joinHint explains a join that failed because --server is not meshca's
// xDS address, or nil for any other failure.
func joinHint(server string, err error) error {
	if strings.Contains(err.Error(), "first record does not look like a TLS handshake") {
		return fmt.Errorf("%s answered in plain HTTP, not TLS: is it the admin API (admin.listen, port 8000 by default)? "+
			"--server takes meshca's xDS address (xds.listen, port 6565 by default), as printed by meshca node add", server)
	}
	return nil
}
