package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"

	"github.com/meshca/meshca/internal/text"
)

// KeyAlgorithm names a key type and size meshca can generate.
type KeyAlgorithm string

// The key algorithms meshca generates. ECDSAP256 is the default.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	ECDSAP384 KeyAlgorithm = "ecdsa-p384"
	RSA2048   KeyAlgorithm = "rsa-2048"
	RSA3072   KeyAlgorithm = "rsa-3072"
)

var keyAlgorithms = []KeyAlgorithm{ECDSAP256, ECDSAP384, RSA2048, RSA3072}

// Limits on RSA keys meshca accepts in CSRs and imported CAs.
const (
	minRSABits = 2048
	maxRSABits = 4096
)

// ParseKeyAlgorithm parses a key algorithm name such as "ecdsa-p256". The
// empty string selects ECDSAP256.
func ParseKeyAlgorithm(s string) (KeyAlgorithm, error) {
	if s == "" {
		return ECDSAP256, nil
	}
	for _, a := range keyAlgorithms {
		if KeyAlgorithm(s) == a {
			return a, nil
		}
	}
	names := make([]string, len(keyAlgorithms))
	for i, a := range keyAlgorithms {
		names[i] = string(a)
	}
	return "", fmt.Errorf("%w %q: use one of %s", ErrKeyAlgorithm, clip(s), strings.Join(names, ", "))
}

// generateKey makes a new private key of algorithm a ("" is ECDSAP256).
func generateKey(a KeyAlgorithm) (crypto.Signer, error) {
	switch a {
	case ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	_, err := ParseKeyAlgorithm(string(a))
	return nil, err
}

// throwawayKeyLike makes a fresh key of the same type and size as pub, so a
// certificate signed with it carries the same signature algorithm.
func throwawayKeyLike(pub crypto.PublicKey) (crypto.Signer, error) {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.GenerateKey(pub.Curve, rand.Reader)
	case *rsa.PublicKey:
		return rsa.GenerateKey(rand.Reader, pub.N.BitLen())
	case ed25519.PublicKey:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("%w: %T", ErrKeyAlgorithm, pub)
}

// checkPublicKey accepts ECDSA P-256/P-384/P-521 and RSA 2048 to 4096 bits
// (and Ed25519 when allowEd25519, for imported issuers).
func checkPublicKey(pub crypto.PublicKey, allowEd25519 bool) error {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s (use P-256 or P-384)", ErrKeyAlgorithm, pub.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := pub.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits (use %d to %d bits)", ErrKeyAlgorithm, n, minRSABits, maxRSABits)
		}
		return nil
	case ed25519.PublicKey:
		if allowEd25519 {
			return nil
		}
	}
	return fmt.Errorf("%w: %T keys (use ECDSA P-256/P-384 or RSA 2048-4096)", ErrKeyAlgorithm, pub)
}

// parsePrivateKeyPEM reads the first PEM block of keyPEM as a PKCS#8, SEC1
// ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY") key. Errors never quote
// the input.
func parsePrivateKeyPEM(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: the key file holds no PEM block", ErrImport)
	}
	if _, ok := block.Headers["Proc-Type"]; ok {
		return nil, fmt.Errorf("%w: encrypted PEM keys are not supported (decrypt it with 'openssl pkey')", ErrImport)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, fmt.Errorf("%w: encrypted PKCS#8 keys are not supported (decrypt it with 'openssl pkey')", ErrImport)
	default:
		return nil, fmt.Errorf("%w: the key file's first PEM block is not a private key (want PKCS#8, SEC1 or PKCS#1)", ErrImport)
	}
	if err != nil {
		// The x509 parse errors describe the structure, never the bytes.
		return nil, fmt.Errorf("%w: cannot parse the private key: %v", ErrImport, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: unsupported private key type %T", ErrImport, key)
	}
	return s, nil
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// isRSA reports whether pub is an RSA key (which also gets keyEncipherment).
func isRSA(pub crypto.PublicKey) bool {
	_, ok := pub.(*rsa.PublicKey)
	return ok
}

// clip keeps hostile input from flooding an error message.
func clip(s string) string { return text.Clip(s, 80) }
