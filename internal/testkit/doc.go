// Package testkit holds the setups that meshca's tests share across
// packages: internal/app, cmd/meshca, internal/cli and internal/bench. It is
// imported only by _test.go files; every helper that can fail takes a
// testing.TB and fails the test itself.
//
// What is here, and when to use it:
//
//   - Loopback servers: LoopbackConfig is the server configuration a test
//     starts meshca with (a data directory of its own, admin and xDS on
//     127.0.0.1:0). FreePort is for the rare listener that must be named
//     before it is bound (a CLI flag); prefer ":0" wherever the address can
//     be read back. Dial opens a TCP connection from a chosen loopback
//     address, as the attack tests' hand-written clients do.
//   - Storage: OpenStore opens a real store in a test's directory, sealed
//     as meshca seals it, for tests that build parts of meshca by hand or
//     edit a stopped meshca's data directory.
//   - etcd: StartEtcd starts one embedded member; StartEtcdCluster
//     several, which a test stops and restarts one by one (each client
//     port behind a Proxy, so a stop also cuts its clients, as a crash
//     does); StartProxy alone cuts and restores one path to etcd.
//   - Logs: Logger sends a server's slog output to the test's log (through
//     LogWriter, which also takes a child process's stderr), shown when the
//     test fails or runs with -v.
//   - Randomised runs: Rand is the random source of a test that draws
//     random numbers, its seed logged (MESHCA_SEED=N replays a run); Soak
//     tells whether the long variant was asked for (MESHCA_SOAK=1).
//   - The meshca binary: BuildMeshca, for tests that run `meshca` as a
//     child process.
//   - Keys and certificates: Key, NewCSR, CertPEM, KeyPEM, ChainDER,
//     TLSCert, ParseCertPEM for what a node or an operator holds; CA, with
//     Serial and Pair for the leaves it signs, for a certificate authority
//     meshca did not make (an organisation PKI to import, a foreign CA to
//     be refused); VerifyChain to check a TLS peer's chain the way a node
//     does; ParseCRLs and Revoked to read the CRLs meshca publishes.
//
// What is not here: starting meshca in process and its admin, xDS and CLI
// clients stay in internal/app's harness_test.go, and running the CLI in
// internal/cli's tests, since testkit imports neither internal/app nor
// internal/cli (their own tests use testkit: that would be an import
// cycle); fakes of one package's consumers stay in that package's tests.
//
// # Caveats
//
// Keys are P-256 ECDSA from crypto/rand; PEM of a private key is for
// writing to a test's own files and must never be logged. A port from
// FreePort may be taken by another process before it is bound. Helpers
// that take a testing.TB call Fatal and so must run on the test's
// goroutine; TLSCert, VerifyChain and Dial return errors instead and may
// run anywhere.
package testkit
