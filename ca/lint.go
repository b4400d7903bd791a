package ca

import (
	"fmt"
	"slices"
	"sync"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3/lint"
)

// lintSources are the zlint sources that apply to a private CA. The CA/B
// Forum and root-program lints are left out: they demand things a SPIFFE
// leaf must not have (no URI SANs, AIA, certificate policies).
var lintSources = lint.SourceList{
	lint.RFC3279,
	lint.RFC5280,
	lint.RFC5480,
	lint.RFC5891,
	lint.RFC8813,
	lint.Community,
}

// linter is the lint gate: the certificate lints of lintSources and the
// configuration they run with, taken from zlint's registry once.
//
// It runs each lint as zlint.LintCertificateEx does (lint.CertificateLint's
// Execute: a fresh instance, configured, CheckApplies, CheckEffective,
// Execute) but keeps only the names of the lints that failed: per
// certificate, LintCertificateEx would also copy and sort the names of
// every lint and fill a map with every result, about a seventh of the
// gate's cost, none of it a lint.
type linter struct {
	lints  []*lint.CertificateLint
	config lint.Configuration
}

var (
	gateOnce sync.Once
	gate     *linter
	gateErr  error
)

// lintGateLints returns the lint gate, built once.
func lintGateLints() (*linter, error) {
	gateOnce.Do(func() {
		reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lintSources})
		if err != nil {
			gateErr = err
			return
		}
		l := &linter{lints: slices.Clone(reg.CertificateLints().Lints()), config: reg.GetConfiguration()}
		if len(l.lints) == 0 {
			gateErr = fmt.Errorf("zlint registry has no certificate lints for %v", lintSources)
			return
		}
		gate = l
	})
	return gate, gateErr
}

// failed runs every lint on c and names those with a result at warn or
// above.
func (l *linter) failed(c *zx509.Certificate) []string {
	var failed []string
	for _, cl := range l.lints {
		if r := cl.Execute(c, l.config); r != nil && r.Status >= lint.Warn {
			failed = append(failed, cl.Name)
		}
	}
	return failed
}

// lintDER runs the lint gate on a DER certificate. Any result at warn or
// above is a failure, reported as a *LintError.
func lintDER(der []byte) error {
	_, err := lintTBS(der)
	return err
}

// lintTBS is lintDER that also returns the to-be-signed part of der, as
// zlint's parser read it, for the check that the real signature covers the
// very certificate linted.
func lintTBS(der []byte) ([]byte, error) {
	l, err := lintGateLints()
	if err != nil {
		return nil, err
	}
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: zlint cannot parse the certificate: %v", ErrLint, err)
	}
	if failed := l.failed(zc); len(failed) > 0 {
		slices.Sort(failed)
		return nil, &LintError{Lints: failed}
	}
	return zc.RawTBSCertificate, nil
}
