// Package authority is meshca's certificate authority policy: what meshca
// issues, and for how long. lifetimes.go decides the lifetime of every
// certificate and join token in one place (defaults, the ranges an
// operator may choose, the NotBefore backdate, the cap at the issuer's
// NotAfter, renewal and CA auto-rotation); the signing library ca and the
// renewal package rotation take those values as plain fields and know no
// policy of their own beyond fallbacks for a zero Config, which tests here
// pin to the same values.
//
// Caveats: the rest of the authority belongs here as well and is still in
// internal/registry: the CA material, its rotation, CRL building with the
// CRL's validity and refresh (registry.CRLValidity), and meshca's own
// server certificate.
package authority
