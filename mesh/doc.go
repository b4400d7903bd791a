// Package mesh is meshca's declarative mesh model: a YAML document of
// services, routes, a front proxy, sidecars and proxyless gRPC services,
// from which Build computes each node's listeners, routes, clusters and
// endpoints. Certificates are never inlined: listeners and clusters name
// SDS secrets (an identity's certificate is "spiffe://<td>/<identity>", the
// trust bundle "spiffe://<td>"), which the server delivers over ADS.
//
// A mesh file (all keys snake_case, unknown keys are errors):
//
//	version: 1                      # required: the format version (1 is the only one)
//	access_log: true                # optional: every Envoy listener sends its access log
//	                                # to meshca (meshca logs); default false; grpc nodes have none
//	services:                       # clusters, named after the service
//	- name: echo
//	  identity: echo                # spiffe://<td>/echo, presented by its sidecar
//	  protocol: http                # or http2 (gRPC behind Envoy)
//	  endpoints:
//	  - {address: 10.0.0.1, port: 15443, weight: 1, locality: {region: eu, zone: eu-1a}}
//	routes:                         # RouteConfigurations, named after the route
//	- name: web
//	  domains: ["*"]
//	  response_headers: [{name: x-upstream-host, value: "%UPSTREAM_HOST%"}]
//	  rules:
//	  - match: {prefix: /, headers: [{name: x-canary, exact: "true"}]}
//	    weighted: [{service: echo-alpha, weight: 80}, {service: echo-beta, weight: 20}]
//	    timeout: 5s
//	    retries: {num_retries: 2, on: [5xx, unavailable], per_try_timeout: 1s}
//	front_proxy:                    # front-proxy nodes
//	  identity: front
//	  https: {port: 8443, route: web, client_certs: required,
//	          allowed_spiffe_ids: [{exact: spiffe://<td>/ops}, {prefix: spiffe://<td>/partners/}],
//	          forward_client_cert: true, hsts: {max_age: 31536000, include_subdomains: true}}
//	  http: {port: 8080, redirect_to_https: permanent_redirect}   # or route: web
//	sidecars:                       # sidecar nodes holding the service's identity
//	- service: echo
//	  inbound_port: 15443           # mTLS on 0.0.0.0
//	  app_port: 8080                # the application on 127.0.0.1
//	  allowed_spiffe_ids: [{exact: spiffe://<td>/front}]
//	  outbound: [{service: billing, port: 9001}]   # 127.0.0.1:9001 -> billing
//	grpc:                           # grpc nodes: xds:///<name>
//	- {name: echo, route: web}
//	grpc_servers:                   # xDS gRPC servers on grpc agent nodes holding the identity
//	- service: greeter              # must have an identity
//	  allowed_spiffe_ids: [{exact: spiffe://<td>/web}]   # default: any ID of the trust domain
//
// Applying a file that is the mesh in use again stores no new version. A
// YAML syntax error is reported at the line of the mistake.
//
// Resource names: listeners https_<port>, http_<port>, inbound_<port>,
// outbound_<service>_<port> and, for grpc nodes, the gRPC name itself
// (and grpc/server?xds.resource.listening_address=<host:port> for the
// server listeners of grpc agent nodes);
// route configs are named after the mesh route, or after the listener
// when inline (redirects, sidecar listeners); clusters and load
// assignments after the service; a sidecar's application is local_<service>.
//
// Caveats:
//   - grpc-go NACKs SDS-based TLS. Clusters built for a grpc node without
//     an agent carry no TLS: services with a sidecar (reached over mTLS)
//     cannot be given to such nodes; keep gRPC-facing services
//     sidecar-free or use agent nodes. On a grpc agent node (Node.Agent)
//     the clusters of services with an identity carry an
//     UpstreamTlsContext on certificate provider instances
//     (agentfiles.Instance of the node's first identity in name order; a
//     node holding none is ErrMissingIdentity) with the service's SPIFFE
//     ID in match_subject_alt_names, and each IP endpoint of a service
//     whose identity the node holds becomes a server listener named
//     GRPCServerListenerName(host:port), requiring client certificates.
//     grpc-go refuses SAN matchers on the server side: an RBAC filter on
//     the caller's URI SAN lets in the grpc_servers entry's
//     allowed_spiffe_ids (default: any ID of the trust domain).
//   - For grpc nodes, virtual hosts match any domain, weight-0 targets and
//     their clusters are left out, timeouts become max_stream_duration and
//     only gRPC retry conditions are kept.
//   - Endpoints given by host name make a STRICT_DNS cluster (no EDS) and
//     are refused for grpc nodes.
//   - Build returns complete state for one node; ordering, versions and
//     removal of RDS/EDS dependents are the server's job.
//   - Parse cannot know which identities exist. Mesh.IdentityRefs lists
//     every identity a document names (services, the front proxy, exact
//     allowed_spiffe_ids) by field path; meshca refuses the apply when one
//     of them does not exist or is revoked.
package mesh
