package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/identity"
)

// apiLeafTTL is the lifetime both servers give a leaf (meshca's default;
// cfsslPolicy's expiry).
const apiLeafTTL = time.Hour

// maxAnswer bounds an answer the load client reads.
const maxAnswer = 1 << 20

// apiTarget is one server under load.
type apiTarget struct {
	name string
	base string // http://HOST:PORT
	pid  int    // the server's process
	// issue asks for one new certificate for the identity name and returns
	// proof of it; it fails unless the answer is a success carrying one.
	issue func(ctx context.Context, c *http.Client, base, name string) (string, error)
	// fetch returns the certificate a proof stands for.
	fetch func(ctx context.Context, c *http.Client, base, name, proof string) (*x509.Certificate, error)

	names  atomic.Int64 // numbers identity names, unique per target
	mu     sync.Mutex
	issued []issuedCert
}

type issuedCert struct{ name, proof string }

// load runs l against the target through client.
func (t *apiTarget) load(ctx context.Context, client *http.Client, l Load) (LoadResult, error) {
	return RunLoad(ctx, l, func(ctx context.Context, _ int) error {
		name := fmt.Sprintf("api-%d", t.names.Add(1))
		proof, err := t.issue(ctx, client, t.base, name)
		if err != nil {
			return err
		}
		t.mu.Lock()
		t.issued = append(t.issued, issuedCert{name, proof})
		t.mu.Unlock()
		return nil
	})
}

// verify checks every certificate the target issued and returns how many.
func (t *apiTarget) verify(ctx context.Context, check leafCheck) (int, error) {
	client := loadClient(8)
	defer client.CloseIdleConnections()
	t.mu.Lock()
	issued := slices.Clone(t.issued)
	t.mu.Unlock()
	err := parallel(ctx, len(issued), 8, func(i int) error {
		is := issued[i]
		cert, err := t.fetch(ctx, client, t.base, is.name, is.proof)
		if err == nil {
			err = check.leaf(cert, is.name)
		}
		if err != nil {
			return fmt.Errorf("certificate for %s: %w", is.name, err)
		}
		return nil
	})
	return len(issued), err
}

func newMeshcaTarget(admin string, pid int) *apiTarget {
	return &apiTarget{name: "meshca", base: "http://" + admin, pid: pid, issue: meshcaIssue, fetch: meshcaFetch}
}

// meshcaIssue adds the identity name, which issues its first certificate
// with a key meshca generates, and returns the certificate's serial.
func meshcaIssue(ctx context.Context, c *http.Client, base, name string) (string, error) {
	var id api.Identity
	if err := callJSON(ctx, c, http.MethodPost, base+api.PathIdentities, api.AddIdentityRequest{Name: name}, http.StatusCreated, &id); err != nil {
		return "", err
	}
	if id.Name != name || id.Cert == nil || id.Cert.Serial == "" {
		return "", errors.New("meshca's answer carries no certificate")
	}
	return id.Cert.Serial, nil
}

// meshcaFetch gets the identity's current certificate, which must be the
// one issued.
func meshcaFetch(ctx context.Context, c *http.Client, base, name, serial string) (*x509.Certificate, error) {
	var out api.Cert
	if err := callJSON(ctx, c, http.MethodGet, base+api.PathCerts+"/"+name, nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	cert, err := firstCert([]byte(out.ChainPEM))
	if err != nil {
		return nil, err
	}
	if got := cert.SerialNumber.Text(16); got != serial {
		return nil, fmt.Errorf("meshca holds serial %s, issued %s", got, serial)
	}
	return cert, nil
}

func newCFSSLTarget(addr string, pid int) *apiTarget {
	return &apiTarget{name: "cfssl", base: "http://" + addr, pid: pid, issue: cfsslIssue,
		fetch: func(_ context.Context, _ *http.Client, _, _, certPEM string) (*x509.Certificate, error) {
			return firstCert([]byte(certPEM))
		}}
}

// cfsslRequest is the body of cfssl's newcert: a certificate request from
// which cfssl generates the key and the CSR. It carries what meshca puts
// in a leaf: the SPIFFE ID as the only SAN, the name as CN, the trust
// domain as O.
type cfsslRequest struct {
	Request struct {
		CN    string              `json:"CN"`
		Names []map[string]string `json:"names"`
		Hosts []string            `json:"hosts"`
		Key   struct {
			Algo string `json:"algo"`
			Size int    `json:"size"`
		} `json:"key"`
	} `json:"request"`
}

// cfsslAnswer is the part of cfssl's answer the client reads; the private
// key it also carries is never decoded.
type cfsslAnswer struct {
	Success bool `json:"success"`
	Result  struct {
		Certificate string `json:"certificate"`
	} `json:"result"`
	Errors []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// cfsslIssue asks newcert for a certificate and returns its PEM.
func cfsslIssue(ctx context.Context, c *http.Client, base, name string) (string, error) {
	var req cfsslRequest
	req.Request.CN = name
	req.Request.Names = []map[string]string{{"O": TrustDomain}}
	req.Request.Hosts = []string{"spiffe://" + TrustDomain + "/" + name}
	req.Request.Key.Algo, req.Request.Key.Size = "ecdsa", 256
	var out cfsslAnswer
	if err := callJSON(ctx, c, http.MethodPost, base+cfsslNewcertPath, req, http.StatusOK, &out); err != nil {
		return "", err
	}
	if !out.Success || len(out.Errors) > 0 {
		return "", fmt.Errorf("cfssl answered no success: %+v", out.Errors)
	}
	if out.Result.Certificate == "" {
		return "", errors.New("cfssl's answer carries no certificate")
	}
	return out.Result.Certificate, nil
}

// callJSON sends body (if any) as JSON and decodes the answer into out. An
// answer with another status is an error quoting at most the start of the
// body (neither server puts a key in an error).
func callJSON(ctx context.Context, c *http.Client, method, url string, body any, want int, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s answered %s: %.200s", method, url, resp.Status, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: answer is not the expected JSON: %w", method, url, err)
	}
	return nil
}

func firstCert(pemData []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(pemData)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// sharedCAFiles are the CA both servers issue from.
type sharedCAFiles struct {
	issuer string // the intermediate alone (cfssl's -ca)
	chain  string // the intermediate, then the root (meshca ca import --cert)
	key    string // the intermediate's key, PKCS#8 (both)
}

// writeSharedCA generates a root and an intermediate with meshca's ca
// package and writes them into dir, the key 0600.
func writeSharedCA(dir string) (sharedCAFiles, leafCheck, error) {
	td, err := identity.TrustDomain(TrustDomain)
	if err != nil {
		return sharedCAFiles{}, leafCheck{}, err
	}
	m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: time.Now()})
	if err != nil {
		return sharedCAFiles{}, leafCheck{}, fmt.Errorf("generate CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(m.IssuerKey)
	if err != nil {
		return sharedCAFiles{}, leafCheck{}, fmt.Errorf("marshal CA key: %w", err)
	}
	certPEM := func(c *x509.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	f := sharedCAFiles{
		issuer: filepath.Join(dir, "ca-issuer.pem"),
		chain:  filepath.Join(dir, "ca-chain.pem"),
		key:    filepath.Join(dir, "ca-key.pem"),
	}
	files := []struct {
		path string
		data []byte
	}{
		{f.issuer, certPEM(m.Issuer)},
		{f.chain, append(certPEM(m.Issuer), certPEM(m.Roots[0])...)},
		{f.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})},
	}
	for _, file := range files {
		if err := os.WriteFile(file.path, file.data, 0o600); err != nil {
			return sharedCAFiles{}, leafCheck{}, err
		}
	}
	check := leafCheck{roots: x509.NewCertPool(), inter: x509.NewCertPool()}
	check.roots.AddCert(m.Roots[0])
	check.inter.AddCert(m.Issuer)
	return f, check, nil
}

// leafCheck checks a leaf either server issued.
type leafCheck struct{ roots, inter *x509.CertPool }

// leaf checks that c chains to the shared CA, names only
// spiffe://TrustDomain/name, lives apiLeafTTL, allows server and client
// auth and holds a P-256 key.
func (lc leafCheck) leaf(c *x509.Certificate, name string) error {
	if _, err := c.Verify(x509.VerifyOptions{Roots: lc.roots, Intermediates: lc.inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return err
	}
	want := "spiffe://" + TrustDomain + "/" + name
	if len(c.URIs) != 1 || c.URIs[0].String() != want || len(c.DNSNames)+len(c.IPAddresses)+len(c.EmailAddresses) != 0 {
		return fmt.Errorf("SANs are not just %s", want)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life != apiLeafTTL {
		return fmt.Errorf("lives %s, not %s", life, apiLeafTTL)
	}
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || c.IsCA {
		return errors.New("not a server and client auth leaf")
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return fmt.Errorf("key is %T, not ECDSA P-256", c.PublicKey)
	}
	return nil
}
