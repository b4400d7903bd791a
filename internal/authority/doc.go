// Package authority is meshca's certificate authority: the CA material in
// use and what meshca issues from it, for how long.
//
// It owns:
//   - the CA set: loaded from the store, generated on first start (audited
//     as ca.init) or imported by the operator (ca.import, refused once
//     anything was issued); the parsed CA in use and, during a rotation,
//     the previous issuer, which keeps signing meshca's own server
//     certificate until it retires (authority.go, peers.go);
//   - issuance: Issue signs with the CA in use and names it; the registry
//     records what it issued through its own Issuer interface;
//   - the CAs peers are checked against (IssuingCAs), the pin a node
//     bootstraps with (ServerIssuer, IssuersPEM) and the trust bundle and
//     CRL every node receives (Trust), all read from the store; and the
//     same CAs as the change feed brought them, without a read
//     (LoadedIssuingCAs), for node handshakes that check the issuer
//     against the store themselves;
//   - the CA-rotation state machine and its loop (rotate.go,
//     rotate_emergency.go): intermediate, root and emergency rotations,
//     their phases kept in the store's CA set. While leaves move to the
//     new issuer (phase reissuing) the authority re-keys nothing itself:
//     the registry's re-keying follows the change feed on the leader, and
//     the rotation counts from the store the leaves still on another
//     issuer and the re-key failures audited (ca.rotate.reissue, failed),
//     and goes on when none is left;
//   - the CRL (crl.go): signed outside any write transaction from the
//     committed revocation records, stored as a record of its own with its
//     audit record, signed again when due (RunCRL);
//   - meshca's own TLS server certificate (servercert.go);
//   - every lifetime rule (lifetimes.go): defaults, the ranges an operator
//     may choose, the NotBefore backdate, the cap at the issuer's NotAfter,
//     renewal and CA auto-rotation. The signing library ca and the renewal
//     package rotation take those values as plain fields.
//
// The authority never calls the registry, which sits above it (the
// registry imports Lifetimes and the audit actions from here, and signs
// through its own Issuer interface, which the authority implements). The
// authority learns what others committed from the store's change feed
// (Run): a revocation gets its CRL, a CA set changed by another writer
// becomes the CA in use (Refresh does the same on demand). Refusals are
// audited through package denials, below both.
//
// # Caveats
//
// A rotation's progress and its last result (RotationStatus,
// LastRotation) are held in the memory of the process that drives it; the
// phase itself is in the store. The CRL number is above the store's audit
// sequence when it was signed and above the stored CRL's number, so it
// only grows, across restarts too; a CRL signed from an older state than
// the stored one is dropped, not stored.
package authority
