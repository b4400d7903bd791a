// Package agent is the node agent: the long-running process on a node that
// makes the keys of the node's identities itself and has meshca sign only
// their CSRs, then hands the certificates to the local proxy.
//
// What it does, once Run starts:
//
//   - Identities. It keeps a WatchIdentities stream open to meshca (on
//     the node's authenticated connection): meshca sends the identities
//     the node holds, their selectors and the CA it issues from at once,
//     and again as soon as its change feed reports an assignment, a
//     selector change, a revocation or a switch of issuing CA. It also
//     asks (nodeapi Identities) when it starts and, as a fallback, every
//     Config.WatchedPoll; while the stream is down it asks every
//     Config.IdentityPoll and whenever the trust bundle or CRL changes,
//     and against a meshca without the stream it only polls.
//   - Keys. For each identity it makes a P-256 key in memory, sends a CSR
//     (nodeapi SignCSR), checks the answer (its own public key, the
//     identity's SPIFFE ID, a chain to the bundle) and renews with a fresh
//     key at about half of each certificate's life (Config.Policy: the
//     jitter is drawn from the serial). At most Config.MaxSigning CSRs
//     are at meshca at once (a CA switch re-keys every identity together).
//     A failed renewal is retried with a jittered backoff (meshca refuses
//     CSRs beyond its signing queue at once, and such a refusal holds back
//     every CSR of the agent for a while, not only that identity's); the
//     current certificate is served until it expires, with a
//     warning once less than a quarter of its life is left and an error
//     below a tenth. Keys never leave the process except into the files
//     Config.FilesDir asks for.
//   - Trust. It keeps an SDS stream to meshca open for the trust-domain
//     secret (spiffe://<td>: the roots and the CRLs), the very secret
//     every proxy of the mesh receives, so a revocation reaches the agent
//     as fast as it reaches any proxy.
//   - Serving. It serves Envoy's SecretDiscoveryService (state of the
//     world, delta and fetch; a server of its own, sdsstream.go, so that
//     the agent links neither go-control-plane's server nor its cache) on
//     a Unix socket, with the secret names meshca itself uses:
//     spiffe://<td>/<identity> per identity and spiffe://<td> for the
//     bundle with its CRLs. The socket is created 0600 in a directory
//     only this user may write to, and removed on exit. Each request is
//     attested: an identity's secret only for a caller whose peer
//     credentials match its assignment's selectors (attest.go). Each
//     secret is built and encoded once per certificate (and once per
//     bundle and CRL) and shared by every answer; a state is sent only to
//     the streams whose secrets it changes. A burst of renewals (a CA
//     switch re-keys every identity) is published as one state once no
//     CSR is pending, or every 50 ms while it lasts; a single change is
//     published at once. A request names at most 4096 secrets and is at
//     most 4 MiB; a connection has at most 100 streams.
//   - Files. With Config.FilesDir it writes, per identity,
//     <dir>/<identity>/cert.pem, key.pem and bundle.pem through
//     internal/agentfiles (key 0600, chain and bundle 0644, directory
//     0700, each by atomic rename) for proxyless gRPC's file_watcher
//     certificate provider.
//   - Workload API. With Config.WorkloadSocket it serves the SPIFFE
//     Workload API (internal/workload) from the same state, each SVID with
//     the selectors meshca assigned: the socket is 0666 in a directory only
//     this user may write to, and callers are matched by their peer
//     credentials. A burst of renewals reaches its clients as the SDS
//     socket publishes it: as one state once no CSR is pending.
//   - State. Agent.State (Source) returns the current certificates,
//     bundle and CRL and a channel closed at the next change.
//
// # Caveats
//
// The node certificate itself is not renewed here: the process that runs
// the agent does that (meshca agent runs the bootstrap renewal beside it)
// and gives a connection that presents the current node certificate on
// each handshake.
//
// Restarting the agent makes new keys and asks for new certificates: its
// keys exist only in its memory. A request is checked when it arrives
// (each ACK too), and a stream's secrets again before anything new is sent
// to it: a state-of-the-world stream naming a secret its caller may no
// longer have (the node lost the identity, or its selectors no longer
// match) is ended with PermissionDenied, and a delta stream is sent the
// secret as removed. What a stream was given before stays with its proxy.
//
// A NACK is logged (a few a minute) and not answered: the rejected secret
// is sent again only when it changes, not in a loop.
package agent
