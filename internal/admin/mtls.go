package admin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Authorizer decides whether a client certificate that chains to the trust
// bundle may call the admin API, and names the caller for audit records.
type Authorizer interface {
	AuthorizeAdmin(ctx context.Context, leaf *x509.Certificate) (string, error)
}

// authzTimeout bounds the store read made during a handshake.
const authzTimeout = 5 * time.Second

// MTLS returns the TLS configuration of a non-loopback admin listener: TLS
// 1.3, meshca's own server certificate from getCert, and a client
// certificate that must verify against the CA's current trust bundle and
// belong to an admin identity.
func MTLS(authority Authority, authz Authorizer, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCert,
		// The chain is verified in VerifyConnection against the bundle in
		// use at handshake time, which an import can change.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("admin API: a client certificate is required")
			}
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			for _, r := range authority.CA().Roots() {
				roots.AddCert(r)
			}
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				return fmt.Errorf("admin API: client certificate does not verify: %w", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), authzTimeout)
			defer cancel()
			if _, err := authz.AuthorizeAdmin(ctx, leaf); err != nil {
				return fmt.Errorf("admin API: %w", err)
			}
			return nil
		},
	}
}
