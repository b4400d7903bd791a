package authority

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// ServerCert hands out meshca's own TLS server certificate
// (spiffe://<td>/meshca plus DNS names and IP addresses), issuing a new one
// when the current one is due (by default at half its lifetime:
// Lifetimes.ServerRenewFraction). Each issuance is recorded and audited.
type ServerCert struct {
	a   *Authority
	dns []string
	ips []net.IP
	ttl time.Duration

	mu   sync.Mutex
	cert *tls.Certificate
	leaf *x509.Certificate
	// signedBy is the issuer leaf's signature was last checked against:
	// the check, an ECDSA verification under mu, runs once per issuer
	// instead of on every handshake.
	signedBy *x509.Certificate
}

// ServerCert returns a source of server certificates with the given DNS
// SANs, lifetime and IP SANs. Clients that verify host names (grpc-go) need
// the name or address they dial on the certificate.
func (a *Authority) ServerCert(dns []string, ttl time.Duration, ips ...net.IP) (*ServerCert, error) {
	if _, err := identity.DNSNames(dns); err != nil {
		return nil, err
	}
	if err := CheckLeafTTL(ttl); err != nil {
		return nil, err
	}
	if len(ips) > ca.MaxIPAddresses {
		return nil, fmt.Errorf("%w: %d IP addresses, the limit is %d", ErrInvalid, len(ips), ca.MaxIPAddresses)
	}
	for _, ip := range ips {
		if ip.To16() == nil || ip.IsUnspecified() || ip.IsMulticast() {
			return nil, fmt.Errorf("%w: IP address %q cannot be on a server certificate", ErrInvalid, ip)
		}
	}
	return &ServerCert{a: a, dns: dns, ips: ips, ttl: ttl}, nil
}

// Get returns a valid server certificate, renewing it when due (see ServerCert).
// Its signature fits tls.Config.GetCertificate.
func (s *ServerCert) Get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.a.cfg.Clock.Now()
	issuer := s.a.serverCA().Issuer()
	if s.leaf != nil && !s.a.cfg.Lifetimes.ServerRenewDue(now, s.leaf.NotBefore, s.leaf.NotAfter) &&
		(s.signedBy == issuer || s.leaf.CheckSignatureFrom(issuer) == nil) {
		s.signedBy = issuer
		return s.cert, nil
	}
	issued, err := s.a.issueServer(context.Background(), s.dns, s.ips, s.ttl)
	if err != nil {
		if s.cert != nil && now.Before(s.leaf.NotAfter) {
			s.a.log.Error("server certificate renewal failed; serving the current one", "not_after", s.leaf.NotAfter, "err", err)
			return s.cert, nil
		}
		return nil, err
	}
	// The roots travel too, so that a node can check the chain against the
	// root hash it was given before it sends its join token.
	chain := [][]byte{issued.DER}
	chain = append(chain, issued.Chain...)
	for _, root := range s.a.CA().Roots() {
		chain = append(chain, root.Raw)
	}
	s.cert = &tls.Certificate{Certificate: chain, PrivateKey: issued.Key, Leaf: issued.Cert}
	s.leaf, s.signedBy = issued.Cert, nil
	return s.cert, nil
}

func (a *Authority) issueServer(ctx context.Context, dns []string, ips []net.IP, ttl time.Duration) (*ca.Issued, error) {
	issuer := a.serverCA()
	issued, err := issuer.Issue(ctx, ca.Request{ID: identity.ServerID(a.cfg.TrustDomain), DNSNames: dns, IPAddresses: ips, TTL: ttl})
	if err != nil {
		a.deny(ctx, store.Event{Action: ActionCertIssue, Actor: "meshca", Identity: identity.ServerName, Outcome: store.OutcomeFailed, Detail: err.Error()})
		return nil, fmt.Errorf("issue server certificate: %w", err)
	}
	// The server key stays in memory: a restart issues a new certificate.
	cert := store.Cert{
		Serial: issued.Serial, Identity: identity.ServerName, DER: issued.DER, Chain: issued.Chain,
		IssuerSerial: serialHex(issuer.Issuer()), NotBefore: issued.Cert.NotBefore, NotAfter: issued.Cert.NotAfter, IssuedAt: a.cfg.Clock.Now().UTC(),
	}
	err = a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		if err := tx.PutCert(cert, nil); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{Action: ActionCertIssue, Actor: "meshca", Identity: identity.ServerName, Serial: cert.Serial,
			Detail: "server certificate; not_after=" + cert.NotAfter.Format(time.RFC3339)})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("record server certificate: %w", err)
	}
	a.log.Info("server certificate issued", "serial", cert.Serial, "not_after", cert.NotAfter)
	return issued, nil
}
