package ca

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Callers test them with errors.Is; the wrapped message says
// what was wrong and, where it helps, what to do. No message ever contains
// key bytes.
var (
	// ErrTTL: the requested lifetime is outside [MinTTL, MaxTTL].
	ErrTTL = errors.New("invalid certificate TTL")
	// ErrInvalidRequest: the request (ID, CSR, ...) cannot be issued.
	ErrInvalidRequest = errors.New("invalid issuance request")
	// ErrLint: the certificate failed the zlint gate and was not released.
	ErrLint = errors.New("certificate failed lint checks")
	// ErrIssuerExpired: the issuing CA certificate is no longer valid.
	ErrIssuerExpired = errors.New("issuing CA certificate has expired")
	// ErrKeyMismatch: a private key does not belong to its certificate.
	ErrKeyMismatch = errors.New("private key does not match the CA certificate")
	// ErrNotCA: a certificate cannot sign certificates.
	ErrNotCA = errors.New("certificate is not a CA")
	// ErrImport: CA material given for import is unusable.
	ErrImport = errors.New("cannot import CA")
	// ErrKeyAlgorithm: an unknown or unsupported key algorithm.
	ErrKeyAlgorithm = errors.New("unsupported key algorithm")
	// ErrConfig: a Config or GenerateOptions value is invalid.
	ErrConfig = errors.New("invalid CA configuration")
)

// LintError reports the zlint lints a certificate failed. errors.Is(err,
// ErrLint) is true for it.
type LintError struct {
	// Lints holds the names of the failed lints, sorted.
	Lints []string
}

func (e *LintError) Error() string {
	return fmt.Sprintf("%v: %s", ErrLint, strings.Join(e.Lints, ", "))
}

// Is makes errors.Is(err, ErrLint) true.
func (e *LintError) Is(target error) bool { return target == ErrLint }
