package ca

import (
	"fmt"
	"sort"
	"sync"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
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

var (
	lintRegistryOnce sync.Once
	lintRegistry     lint.Registry
	lintRegistryErr  error
)

// registry returns the filtered zlint registry, built once.
func registry() (lint.Registry, error) {
	lintRegistryOnce.Do(func() {
		lintRegistry, lintRegistryErr = lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lintSources})
		if lintRegistryErr == nil && len(lintRegistry.Names()) == 0 {
			lintRegistryErr = fmt.Errorf("zlint registry has no lints for %v", lintSources)
		}
	})
	return lintRegistry, lintRegistryErr
}

// lintDER runs the lint gate on a DER certificate. Any result at warn or
// above is a failure, reported as a *LintError.
func lintDER(der []byte) error {
	reg, err := registry()
	if err != nil {
		return err
	}
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("%w: zlint cannot parse the certificate: %v", ErrLint, err)
	}
	res := zlint.LintCertificateEx(zc, reg)
	var failed []string
	for name, r := range res.Results {
		if r != nil && r.Status >= lint.Warn {
			failed = append(failed, name)
		}
	}
	if len(failed) > 0 {
		sort.Strings(failed)
		return &LintError{Lints: failed}
	}
	return nil
}
