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
// Every leaf is first signed by a throwaway copy of the issuer (same subject,
// same subject key identifier, a throwaway key) and linted with zlint's RFC
// and community lints; the real key signs only a certificate that passed, and
// the two to-be-signed certificates must be byte-identical. This is the
// approach Let's Encrypt's Boulder takes. cfssl's own lint hook is not used:
// it fails every signature on Go 1.17 and later.
//
// # Caveats
//
//   - cfssl logs through a package-level logger; New turns it down to fatal
//     for the whole process.
//   - New generates a throwaway key of the issuer's type. For an imported
//     RSA-4096 issuer that takes a second or more.
//   - Issue does not store or audit anything: the caller records the issued
//     certificate and keeps Issued.Key sealed.
package ca
