// Package xds is meshca's xDS server: ADS (state of the world and delta),
// the standalone SDS service and the per-type services, on go-control-plane,
// behind mTLS with node certificates, plus the node join service on the same
// port. It serves resources built elsewhere (secrets by package sds,
// listeners and clusters by package mesh) and builds none itself.
//
// Its exported API mentions no internal package: it declares what it needs
// from its callers (Clock, TelemetrySink, Joiner, CSRSigner, Authenticator)
// and the node service's messages are the public package nodeapi. The node
// service answers Join without a node certificate, and Renew, SignCSR (an
// agent node's CSR for one of its identities), Identities (the
// identities an agent node may ask certificates for) and WatchIdentities
// (the same answer, sent again whenever AgentsChanged or AllAgentsChanged
// says it may have changed; at most a few streams per node) only on a
// node's authenticated connection.
//
// Security model. go-control-plane trusts node.id as the client sends it
// and lets a later request replace it. So the node is authenticated from
// its TLS certificate when the connection is made, bound to each stream
// when the stream opens, and every request (SotW, delta and fetch) must name
// that node and only resources the node may receive; anything else closes
// the stream with PermissionDenied, is counted and audited. A node
// certificate must be signed by one of meshca's issuing CAs (Config.Roots:
// not the roots above them, which an organisation may share with other CAs)
// and be, byte for byte, the certificate the Authenticator recorded. A
// revoked node's genuine certificate completes the handshake, so that its
// calls can be refused saying it was revoked; its connection is then
// treated as one without a node certificate (below).
//
// Caching. Each node has its own snapshot in a SnapshotCache created with
// ads=false, holding exactly the resources the node may receive. ads=false
// matters: in ADS mode go-control-plane v0.14.0 answers a named request
// only when it names every resource of its type in the snapshot, and then
// drops the watch; Envoy asks for secrets by name, one SDS stream per
// secret, and grpc-go subscribes incrementally. A wildcard request can only
// ever see the node's own snapshot.
//
// Snapshots are handed in, never fetched: the server knows nothing of the
// registry or the store. Node configuration (internal/nodeconfig) computes
// each node's resources from the store's change feed and calls SetNode,
// RemoveNode and SetTrust, as go-control-plane's SetSnapshot is meant to be
// used. The trust bundle is given once for all nodes (SetTrust) and added
// to every node's secrets; a new bundle or CRL swaps that one secret in
// every snapshot without encoding the others again.
//
// Every resource is validated (deep, into every typed_config) before it is
// published: a NACKed config would be resent in a tight loop.
//
// Peers without a node certificate. Anyone can reach the port, and Join
// needs no certificate. grpc-go allocates a message of the announced size
// (up to the server's MaxRecvMsgSize) before any interceptor runs, and its
// limits are per server. So the server runs the TLS handshake itself, in
// a gate in front of two gRPC servers: connections with a verified node
// certificate of an active node go to the nodes' server (at most 64 per
// node, so that one certificate cannot take every slot); all others to a
// second server that
// knows only Join, refuses any other method from its headers, and holds at
// most two 64 KiB messages per connection, with static flow-control
// windows and short idle and age limits. The gate counts connections from
// accept: a total (Limits.MaxConnections), a total for peers without a
// certificate, handshakes included (when full, the oldest of the address
// holding the most is closed, so a flood delays joins but cannot lock
// nodes out), and a limit per remote address once the handshake shows no
// certificate.
//
// Caveats. A client that verifies no certificate during the handshake
// still costs a handshake each time (about a millisecond of CPU); the gate
// bounds what it can hold, not what it can make meshca compute.
package xds
