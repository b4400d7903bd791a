// Package ca issues meshca's certificates: it owns the CA key material
// (generated or imported), signs short-lived SPIFFE leaf certificates on
// cfssl's local signer and refuses to release anything zlint objects to.
//
// meshca, not cfssl, decides what goes into a certificate. Issue validates
// the SPIFFE ID, the DNS names, the TTL and the optional CSR, then sets the
// subject, the SANs, the serial and both ends of the validity window itself,
// so that cfssl never copies a caller's string into a SAN or computes its own
// dates. Only the public key is taken from a CSR.
//
// Every leaf passes zlint's RFC and community lints before Issue returns
// it; a leaf zlint objects to is never returned. By default the real key
// signs and the signed certificate is linted, which is enough for a private
// CA: nothing is published when a certificate is signed, only when it is
// released. With Config.LintBeforeSigning a copy is first signed by a
// throwaway issuer (same subject, same subject key identifier, a throwaway
// key) and linted, the real key signs only what passed, and the two
// to-be-signed certificates must be byte-identical: the approach Let's
// Encrypt's Boulder takes, at the price of a second signature (about 30%
// fewer certificates per second). cfssl's own lint hook is not used: it fails every
// signature on Go 1.17 and later.
//
// # Caveats
//
//   - cfssl logs through a package-level logger; New turns it down to fatal
//     for the whole process.
//   - With LintBeforeSigning, New generates a throwaway key of the issuer's
//     type. For an imported RSA-4096 issuer that takes a second or more.
//   - Issue does not store or audit anything: the caller records the issued
//     certificate and keeps Issued.Key sealed.
package ca
