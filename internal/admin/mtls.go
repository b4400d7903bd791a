package admin

import (
	"net"
	"net/http"
	"strings"

	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/meshca/meshca/internal/api"
	"time"
)

// Authorizer decides whether a client certificate that chains to the trust
// bundle may call the admin API, and names the caller for audit records.
type Authorizer interface {
	AuthorizeAdmin(ctx context.Context, leaf *x509.Certificate) (string, error)
}

// authzTimeout bounds the store read made during a handshake.
const authzTimeout = 5 * time.Second

// Issuers names the CAs whose certificates meshca accepts from its peers:
// its own issuing CA and, during a rotation, the previous one.
type Issuers interface {
	IssuingCAs() []*x509.Certificate
}

// MTLS returns the TLS configuration of a non-loopback admin listener: TLS
// 1.3, meshca's own server certificate from getCert, and a client
// certificate that must be issued by one of meshca's issuing CAs (another CA
// under the same organisation root does not do) and be an admin credential
// meshca recorded. now is the clock the client certificate's validity is
// judged by (nil: the wall clock), the same as the rest of meshca's.
func MTLS(issuers Issuers, authz Authorizer, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), now func() time.Time) *tls.Config {
	if now == nil {
		now = time.Now
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCert,
		// The chain is verified in VerifyConnection against the issuing CAs
		// in use at handshake time, which an import or rotation changes.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("admin API: a client certificate is required")
			}
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			for _, c := range issuers.IssuingCAs() {
				roots.AddCert(c)
			}
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				return fmt.Errorf("admin API: client certificate was not issued by meshca's CA: %w", err)
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

// Authorizer, when set in Config, is asked again on every request of an
// mTLS connection, so that a revoked admin identity loses access at once
// rather than when its keep-alive connection ends.
func (s *Server) adminOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !jsonPost(w, r, s) {
			return
		}
		if s.cfg.Authorizer != nil {
			if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
				s.reply(w, http.StatusUnauthorized, api.Error{Error: "a client certificate is required", Code: api.CodeDenied})
				return
			}
			if _, err := s.cfg.Authorizer.AuthorizeAdmin(r.Context(), r.TLS.PeerCertificates[0]); err != nil {
				s.reply(w, http.StatusForbidden, api.Error{Error: "this certificate may not use the admin API", Code: api.CodeDenied})
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// loopbackOnly guards the plain-HTTP loopback listener against browsers:
// a page on the operator's machine must not drive the API. The Host must
// be a loopback address or localhost (DNS rebinding sends the attacker's
// name), and a POST must be JSON (a cross-site form or text/plain POST
// cannot set that without a CORS preflight, which this API never grants).
func (s *Server) loopbackOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			s.reply(w, http.StatusForbidden, api.Error{Error: "the loopback admin API only answers requests for localhost or a loopback address", Code: api.CodeDenied})
			return
		}
		if !jsonPost(w, r, s) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// jsonPost refuses a POST whose body is not JSON. POST is the one writing
// method a page may send cross-site without a CORS preflight (as a form or
// text/plain), and a browser holding an admin client certificate would
// present it; DELETE and PUT always need a preflight, never granted here.
func jsonPost(w http.ResponseWriter, r *http.Request, s *Server) bool {
	if r.Method != http.MethodPost {
		return true
	}
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); ct != "application/json" {
		s.reply(w, http.StatusUnsupportedMediaType, api.Error{Error: "send the request body as application/json", Code: api.CodeInvalid})
		return false
	}
	return true
}
