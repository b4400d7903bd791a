package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/meshca/meshca/internal/api"
)

type clientConfig struct {
	Addr                   string
	TLSCert, TLSKey, TLSCA string
}

// client calls the admin API.
type client struct {
	base string
	http *http.Client
}

// ServerName is the identity name whose certificate a remote admin API
// presents; the CLI checks its SPIFFE ID instead of a host name.
const ServerName = "meshca"

func newClient(cfg clientConfig) (*client, error) {
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("admin address %q is not host:port (for example %s)", cfg.Addr, DefaultAdmin)
	}
	tr := &http.Transport{
		Proxy:                 nil, // the admin API is never reached through a proxy
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
	}
	c := &client{base: "http://" + cfg.Addr, http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
	useTLS := cfg.TLSCert != "" || cfg.TLSKey != "" || cfg.TLSCA != ""
	if !useTLS {
		if !isLoopback(host) {
			return nil, fmt.Errorf("the admin API at %s is not on loopback and requires mTLS: pass --tls-cert, --tls-key and --tls-ca (an admin identity's certificate and the trust bundle)", cfg.Addr)
		}
		return c, nil
	}
	if cfg.TLSCert == "" || cfg.TLSKey == "" || cfg.TLSCA == "" {
		return nil, errors.New("mTLS needs all three of --tls-cert, --tls-key and --tls-ca")
	}
	pair, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("load client certificate %s and key %s: the files must hold a matching PEM certificate and key", cfg.TLSCert, cfg.TLSKey)
	}
	bundle, err := os.ReadFile(cfg.TLSCA)
	if err != nil {
		return nil, fmt.Errorf("read trust bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return nil, fmt.Errorf("trust bundle %s holds no PEM certificate (get it with: meshca ca bundle)", cfg.TLSCA)
	}
	tr.TLSClientConfig = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		// The server is identified by its SPIFFE ID, not a host name:
		// verify the chain against the bundle, then the ID.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verifyServer(roots),
	}
	c.base = "https://" + cfg.Addr
	return c, nil
}

func verifyServer(roots *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("admin API presented no certificate")
		}
		certs := make([]*x509.Certificate, 0, len(raw))
		for _, der := range raw {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("admin API certificate: %w", err)
			}
			certs = append(certs, c)
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return &untrustedServerError{fmt.Errorf("its certificate does not verify against the trust bundle: %w", err)}
		}
		if len(certs[0].URIs) != 1 || certs[0].URIs[0].Scheme != "spiffe" || certs[0].URIs[0].Path != "/"+ServerName {
			return &untrustedServerError{fmt.Errorf("its certificate is not meshca's (want SPIFFE ID spiffe://<trust-domain>/%s)", ServerName)}
		}
		return nil
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// do sends a request and decodes a JSON answer into out (unless out is nil).
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, c.http, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", c.base, err)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("admin API at %s sent an answer this meshca does not understand: %w", c.base, err)
	}
	return nil
}

// stream sends one request and calls fn with each line of the answer
// (newline-delimited JSON). There is no overall time limit, since the
// server sends a line every second or so while it works, but a silence of
// streamIdle ends the call.
func (c *client) stream(ctx context.Context, method, path string, body any, fn func(line []byte) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errIdle := fmt.Errorf("the admin API at %s sent nothing for %s", c.base, streamIdle)
	idle := time.AfterFunc(streamIdle, func() { cancel(errIdle) })
	defer idle.Stop()
	h := *c.http
	h.Timeout = 0
	resp, err := c.send(ctx, &h, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		idle.Reset(streamIdle)
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if cause := context.Cause(ctx); cause == errIdle {
		return cause
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the answer of %s: %w", c.base, err)
	}
	return nil
}

// streamIdle is how long stream waits for the next line.
const streamIdle = time.Minute

// send sends a request and returns a successful answer, or the error the
// server gave.
func (c *client) send(ctx context.Context, h *http.Client, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of %s: %w", c.base, err)
	}
	var e api.Error
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		if len(e.Problems) > 0 {
			return nil, errors.New(e.Error + ":\n  " + strings.Join(e.Problems, "\n  "))
		}
		return nil, errors.New(e.Error)
	}
	if bytes.Contains(data, []byte("HTTP request to an HTTPS server")) {
		return nil, fmt.Errorf("the admin API at %s requires mTLS: pass --tls-cert, --tls-key and --tls-ca (an admin identity's certificate and the trust bundle)", c.base)
	}
	return nil, fmt.Errorf("admin API at %s answered %s", c.base, resp.Status)
}

// untrustedServerError is a failed check of the admin API's certificate.
type untrustedServerError struct{ why error }

func (e *untrustedServerError) Error() string { return e.why.Error() }
func (e *untrustedServerError) Unwrap() error { return e.why }

func (c *client) unreachable(err error) error {
	msg := err.Error()
	var untrusted *untrustedServerError
	switch {
	case errors.As(err, &untrusted):
		return fmt.Errorf("the server at %s is not the meshca that --tls-ca trusts: %w", c.base, untrusted)
	case strings.Contains(msg, "remote error: tls:"):
		// The handshake reached meshca, which refused the client
		// certificate (it sends a TLS alert, not an HTTP answer).
		return fmt.Errorf("the admin API at %s refused this client certificate (%s): it must be the current certificate of an active identity "+
			"added with --admin-access (meshca cert issue NAME --out DIR writes one); 'meshca audit list' on the server shows the refusal as admin.auth",
			c.base, msg[strings.Index(msg, "remote error: tls:"):])
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"), strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Errorf("the admin API at %s answers plain HTTP, not TLS: it is the loopback listener (admin.listen); "+
			"leave out --tls-cert, --tls-key and --tls-ca there, or point --admin at the address of admin.mtls_listen", c.base)
	}
	why := "no answer"
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		why = "connection refused"
	case errors.Is(err, context.DeadlineExceeded), os.IsTimeout(err):
		why = "timed out"
	case errors.Is(err, context.Canceled):
		return err
	default:
		var ue *url.Error
		if errors.As(err, &ue) {
			why = strings.TrimPrefix(ue.Err.Error(), "dial tcp ")
		}
	}
	return fmt.Errorf("cannot reach the meshca admin API at %s (%s): start it with 'meshca server', or point --admin or %s at it", c.base, why, EnvAdmin)
}

func escapeName(name string) string {
	// Identity names contain '/': escape each segment, keep the slashes.
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}
