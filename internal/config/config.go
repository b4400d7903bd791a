// Package config holds meshca's server settings: their defaults (the embedded
// default needs no file and no flag), the YAML file format, and validation
// whose errors name the offending key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meshca/meshca/internal/authority"
)

// ErrInvalid marks configuration errors; the message names the key.
var ErrInvalid = errors.New("invalid configuration")

// Config is the server configuration. YAML keys are the field tags.
type Config struct {
	DataDir     string   `yaml:"data_dir"`
	TrustDomain string   `yaml:"trust_domain"`
	Admin       Admin    `yaml:"admin"`
	XDS         XDS      `yaml:"xds"`
	Log         Log      `yaml:"log"`
	CA          CA       `yaml:"ca"`
	Rotation    Rotation `yaml:"rotation"`
	Store       Store    `yaml:"store"`
}

// Admin configures the admin HTTP API.
type Admin struct {
	// Listen is host:port. On loopback it serves plain HTTP; on any other
	// address it requires mTLS with an admin identity's certificate.
	Listen string `yaml:"listen"`
	// MTLSListen, when set, is a second listener that always requires mTLS:
	// remote operators use it while Listen stays on loopback.
	MTLSListen string `yaml:"mtls_listen"`
	// DNSNames are put on the admin API's server certificate when it serves
	// mTLS.
	DNSNames []string `yaml:"dns_names"`
}

// XDS configures the xDS gRPC server and node credentials.
type XDS struct {
	Listen string `yaml:"listen"`
	// Advertise is the address nodes are told to use, host:port, when it
	// is not Listen (a listener on every address, or behind NAT). Each
	// replica registers it for nodes to fail over to, and its host is put
	// on the replica's server certificate. Required on etcd when Listen is
	// on every address.
	Advertise string `yaml:"advertise"`
	// DNSNames are put on meshca's server certificate next to its SPIFFE ID.
	// Proxyless gRPC nodes check the host of their --server against them.
	DNSNames []string `yaml:"dns_names"`
	// IPSANs are IP addresses put on that certificate, for nodes that reach
	// meshca by address. The listen address, when it is one IP, is added.
	IPSANs []string `yaml:"ip_sans"`
	// JoinTokenTTL is how long a node's one-time join token is valid.
	JoinTokenTTL Duration `yaml:"join_token_ttl"`
	// NodeCertTTL is the lifetime of node certificates.
	NodeCertTTL Duration `yaml:"node_cert_ttl"`
	// MaxConnections bounds the xDS port's open connections; meshca lowers
	// it at start to fit the descriptor limit, keeping some for the admin
	// API and the store.
	MaxConnections int `yaml:"max_connections"`
	// MaxUnauthenticatedConnections bounds connections without a node
	// certificate (joining nodes, or anyone); the oldest is closed when a
	// new one needs room. MaxUnauthenticatedPerAddress bounds them per
	// remote IP address (per /64 for IPv6).
	MaxUnauthenticatedConnections int `yaml:"max_unauthenticated_connections"`
	MaxUnauthenticatedPerAddress  int `yaml:"max_unauthenticated_per_address"`
	// IdleTimeout closes a node's connection that has had no stream for
	// this long.
	IdleTimeout Duration `yaml:"idle_timeout"`
}

// Log configures logging.
type Log struct {
	Format string `yaml:"format"` // text or json
	Level  string `yaml:"level"`  // debug, info, warn, error
}

// CA configures the certificate authority.
type CA struct {
	KeyAlgorithm    string   `yaml:"key_algorithm"`
	RootTTL         Duration `yaml:"root_ttl"`
	IntermediateTTL Duration `yaml:"intermediate_ttl"`
	DefaultLeafTTL  Duration `yaml:"default_leaf_ttl"`
	// LintBeforeSigning lints a throwaway-signed copy before the real key
	// signs (the real key never signs a bad certificate; a second signature,
	// about 30% fewer certificates per second). Off: the signed certificate
	// is linted before release.
	LintBeforeSigning bool `yaml:"lint_before_signing"`
}

// Rotation configures automatic certificate renewal.
type Rotation struct {
	// Fraction of a certificate's lifetime after which it is renewed.
	Fraction float64 `yaml:"fraction"`
	// Jitter moves each renewal earlier by up to this fraction of the
	// lifetime, so renewals spread out; 0 disables it.
	Jitter float64 `yaml:"jitter"`
}

// Store configures where the state is kept: the bbolt file in DataDir
// (the default), or etcd.
type Store struct {
	LockTimeout Duration `yaml:"lock_timeout"`
	// CertRetention is how long an expired certificate stays in the
	// store after its NotAfter before the leader prunes it.
	CertRetention Duration `yaml:"cert_retention"`
	// Etcd, when it names endpoints, keeps the state in etcd instead of the
	// bbolt file in DataDir, so that several replicas can share it.
	Etcd Etcd `yaml:"etcd"`
}

// Etcd configures the etcd store.
type Etcd struct {
	Endpoints   []string `yaml:"endpoints"` // HOST:PORT of etcd members
	Prefix      string   `yaml:"prefix"`    // every key starts with it (empty: /meshca)
	TLS         EtcdTLS  `yaml:"tls"`
	DialTimeout Duration `yaml:"dial_timeout"` // bounds connecting and the first read (0: 5s)
}

// EtcdTLS names PEM files for TLS to etcd: CA checks the members'
// certificates; Cert and Key are meshca's client certificate.
type EtcdTLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Enabled reports whether the state is kept in etcd.
func (e Etcd) Enabled() bool { return len(e.Endpoints) > 0 }

// validate checks store.etcd; it returns one error per problem, each
// naming its key.
func (e Etcd) validate() []error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("store.etcd.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	for _, ep := range e.Endpoints {
		host, port, err := net.SplitHostPort(ep)
		if err != nil || host == "" || port == "" || strings.Contains(ep, "/") {
			bad("endpoints", "%q is not HOST:PORT (for example 127.0.0.1:2379; TLS is set under store.etcd.tls, not with https://)", ep)
		}
	}
	if p := e.Prefix; p != "" && p[0] != '/' || strings.TrimRight(p, "/") == "" || strings.ContainsAny(p, "\x00\n") {
		bad("prefix", "%q: use a key path such as %s, one per meshca installation sharing the etcd", p, DefaultEtcdPrefix)
	}
	if (e.TLS.Cert == "") != (e.TLS.Key == "") {
		bad("tls", "set both cert and key (meshca's client certificate for etcd), or neither")
	}
	if e.TLS != (EtcdTLS{}) && !e.Enabled() {
		bad("tls", "set, but store.etcd.endpoints is empty: name the etcd members, or remove store.etcd")
	}
	if d := e.DialTimeout.D(); d != 0 && (d < 100*time.Millisecond || d > 5*time.Minute) {
		bad("dial_timeout", "%s is out of range: 100ms to 5m", d)
	}
	return errs
}

// Duration is a time.Duration written as "90s", "1h", "720h" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 90s or 1h", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use a number with a unit: 90s, 15m, 1h, 720h)", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Default returns the embedded default: everything on loopback, data in
// ./meshca-data.
func Default() Config {
	life := authority.Default()
	return Config{
		DataDir:     "meshca-data",
		TrustDomain: "mesh.local",
		Admin:       Admin{Listen: "127.0.0.1:8000"},
		XDS: XDS{
			Listen: "127.0.0.1:6565",
			// Loopback, by name and address: what node add prints on a
			// default server.
			DNSNames:     []string{"localhost"},
			IPSANs:       []string{"127.0.0.1", "::1"},
			JoinTokenTTL: Duration(life.JoinToken),
			NodeCertTTL:  Duration(life.Node),

			MaxConnections:                16384,
			MaxUnauthenticatedConnections: 128,
			MaxUnauthenticatedPerAddress:  16,
			IdleTimeout:                   Duration(5 * time.Minute),
		},
		Log: Log{Format: "text", Level: "info"},
		CA: CA{
			KeyAlgorithm:    "ecdsa-p256",
			RootTTL:         Duration(life.Root),
			IntermediateTTL: Duration(life.Intermediate),
			DefaultLeafTTL:  Duration(life.Leaf),
		},
		Rotation: Rotation{Fraction: life.RenewFraction, Jitter: life.RenewJitter},
		Store: Store{
			LockTimeout:   Duration(time.Second),
			CertRetention: Duration(7 * 24 * time.Hour),
			Etcd:          Etcd{Prefix: DefaultEtcdPrefix, DialTimeout: Duration(5 * time.Second)},
		},
	}
}

// DefaultEtcdPrefix is store.etcd.prefix when the file does not set it.
const DefaultEtcdPrefix = "/meshca"

// maxFileSize bounds the config file read.
const maxFileSize = 1 << 20

// Load reads a YAML file over the defaults. Unknown keys are errors.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return Config{}, fmt.Errorf("%w: %s is larger than 1 MiB", ErrInvalid, path)
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type config\.(\w+)`)

// Parse decodes YAML over the defaults. It does not validate; call Validate
// after applying flags.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: %s", ErrInvalid, readable(err))
	}
	return cfg, nil
}

// readable rewrites yaml.v3's Go-flavoured messages into ones that name the
// key as the user wrote it.
func readable(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n")
	var lines []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		if m := unknownField.FindStringSubmatch(l); m != nil {
			section := sectionKey[m[3]]
			key := m[2]
			if section != "" {
				key = section + "." + key
			}
			l = fmt.Sprintf("line %s: unknown key %q", m[1], key)
		}
		if l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}

var sectionKey = map[string]string{"Admin": "admin", "XDS": "xds", "Log": "log", "CA": "ca", "Rotation": "rotation", "Store": "store", "Etcd": "store.etcd", "EtcdTLS": "store.etcd.tls"}

// Validate checks every value and returns all problems at once, each naming
// its key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	if c.TrustDomain == "" {
		bad("trust_domain", "must not be empty (for example mesh.local)")
	}
	for key, addr := range map[string]string{"admin.listen": c.Admin.Listen, "xds.listen": c.XDS.Listen} {
		if _, _, err := net.SplitHostPort(addr); err != nil || addr == "" {
			bad(key, "%q is not host:port (for example 127.0.0.1:8000)", addr)
		}
	}
	for key, names := range map[string][]string{"xds.dns_names": c.XDS.DNSNames, "admin.dns_names": c.Admin.DNSNames} {
		for _, n := range names {
			if net.ParseIP(n) != nil {
				bad(key, "%q is an IP address, not a DNS name: list it under xds.ip_sans", n)
			}
		}
	}
	for _, a := range c.XDS.IPSANs {
		if ip := net.ParseIP(a); ip == nil || ip.IsUnspecified() || ip.IsMulticast() {
			bad("xds.ip_sans", "%q is not a unicast IP address (for example 127.0.0.1 or 10.0.0.5)", a)
		}
	}
	c.validateAdvertise(bad)
	if c.Admin.MTLSListen != "" {
		if _, _, err := net.SplitHostPort(c.Admin.MTLSListen); err != nil {
			bad("admin.mtls_listen", "%q is not host:port (for example 0.0.0.0:8001)", c.Admin.MTLSListen)
		}
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q: use text or json", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	switch c.CA.KeyAlgorithm {
	case "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072":
	default:
		bad("ca.key_algorithm", "%q: use ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072", c.CA.KeyAlgorithm)
	}
	// Lifetimes: internal/authority's checks, each under its key.
	life := c.lifetimes()
	for _, k := range []struct {
		key string
		err error
	}{
		{"ca.root_ttl", authority.RootTTL.Check(life.Root)},
		{"ca.intermediate_ttl", life.CheckIntermediate()},
		{"ca.default_leaf_ttl", authority.LeafTTL.Check(life.Leaf)},
		{"xds.join_token_ttl", authority.JoinTokenTTL.Check(life.JoinToken)},
		{"xds.node_cert_ttl", authority.LeafTTL.Check(life.Node)},
		{"rotation.fraction", authority.CheckRenewFraction(life.RenewFraction)},
		{"rotation.jitter", authority.CheckRenewJitter(life.RenewJitter, life.RenewFraction)},
	} {
		if k.err != nil {
			bad(k.key, "%v", k.err)
		}
	}
	if n := c.XDS.MaxConnections; n < 16 || n > 1_000_000 {
		bad("xds.max_connections", "%d is out of range: 16 to 1000000", n)
	}
	if n := c.XDS.MaxUnauthenticatedConnections; n < 1 || n > 1024 || n > c.XDS.MaxConnections {
		bad("xds.max_unauthenticated_connections", "%d is out of range: 1 to 1024 (each may hold up to 1 MiB), at most xds.max_connections", n)
	}
	if n := c.XDS.MaxUnauthenticatedPerAddress; n < 1 || n > c.XDS.MaxUnauthenticatedConnections {
		bad("xds.max_unauthenticated_per_address", "%d is out of range: 1 to xds.max_unauthenticated_connections (%d)", n, c.XDS.MaxUnauthenticatedConnections)
	}
	if d := c.XDS.IdleTimeout.D(); d < time.Second || d > 24*time.Hour {
		bad("xds.idle_timeout", "%s is out of range: 1s to 24h", d)
	}
	if d := c.Store.LockTimeout.D(); d <= 0 || d > time.Minute {
		bad("store.lock_timeout", "%s is out of range: above 0 and at most 1m", d)
	}
	if d := c.Store.CertRetention.D(); d < time.Hour || d > 10*365*24*time.Hour {
		bad("store.cert_retention", "%s is out of range: 1h to 87600h", d)
	}
	errs = append(errs, c.Store.Etcd.validate()...)
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
}

// Lifetimes returns the lifetime rules of this configuration: its keys
// over internal/authority's defaults, checked. Everything meshca issues
// takes its lifetimes from the result.
func (c Config) Lifetimes() (authority.Lifetimes, error) {
	life := c.lifetimes()
	if err := life.Validate(); err != nil {
		return authority.Lifetimes{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return life, nil
}

func (c Config) lifetimes() authority.Lifetimes {
	life := authority.Default()
	life.Leaf = c.CA.DefaultLeafTTL.D()
	life.Node = c.XDS.NodeCertTTL.D()
	life.JoinToken = c.XDS.JoinTokenTTL.D()
	life.Root = c.CA.RootTTL.D()
	life.Intermediate = c.CA.IntermediateTTL.D()
	life.RenewFraction = c.Rotation.Fraction
	life.RenewJitter = c.Rotation.Jitter
	return life
}

// ServerIPs returns the IP SANs of meshca's server certificate: xds.ip_sans,
// then the host of xds.listen when it is a single address (not 0.0.0.0 or
// ::), then the host of xds.advertise when it is an IP, each once. Call it on a validated Config.
func (c Config) ServerIPs() []net.IP {
	var out []net.IP
	add := func(ip net.IP) {
		if ip != nil && !ip.IsUnspecified() && !slices.ContainsFunc(out, ip.Equal) {
			out = append(out, ip)
		}
	}
	for _, a := range c.XDS.IPSANs {
		add(net.ParseIP(a))
	}
	for _, a := range []string{c.XDS.Listen, c.XDS.Advertise} {
		if host, _, err := net.SplitHostPort(a); err == nil {
			add(net.ParseIP(host))
		}
	}
	return out
}

// validateAdvertise checks xds.advertise, and refuses a replica on etcd
// that listens on every address without it: nodes fail over to the
// addresses replicas register, and a guessed one would be wrong.
func (c Config) validateAdvertise(bad func(key, format string, args ...any)) {
	if a := c.XDS.Advertise; a != "" {
		host, port, err := net.SplitHostPort(a)
		p, perr := strconv.ParseUint(port, 10, 16)
		ip := net.ParseIP(host)
		switch {
		case err != nil || host == "" || perr != nil || p == 0:
			bad("xds.advertise", "%q is not host:port with a port in 1-65535 (for example meshca-1.internal:6565)", a)
		case ip != nil && (ip.IsUnspecified() || ip.IsMulticast()):
			bad("xds.advertise", "%q is not an address nodes can dial: name this replica's own host or IP", a)
		}
		return
	}
	host, _, err := net.SplitHostPort(c.XDS.Listen)
	if err != nil || !c.Store.Etcd.Enabled() {
		return
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		bad("xds.advertise", "must be set when xds.listen %q is on every address and the store is etcd: "+
			"each replica registers the address nodes fail over to; pass --xds-advertise HOST:PORT with this replica's own host name or IP", c.XDS.Listen)
	}
}

// ServerDNSNames returns the DNS names of meshca's server certificate:
// xds.dns_names, admin.dns_names, and the host of xds.advertise when it is
// a name, each once.
func (c Config) ServerDNSNames() []string {
	out := slices.Clone(c.XDS.DNSNames)
	add := func(n string) {
		if n != "" && net.ParseIP(n) == nil && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	for _, n := range c.Admin.DNSNames {
		add(n)
	}
	if host, _, err := net.SplitHostPort(c.XDS.Advertise); err == nil {
		add(host)
	}
	return out
}

// AdvertisedXDS is the xDS address nodes are told to use (by node add and
// node token), given the address the xDS listener is bound to:
// xds.advertise when set. Otherwise a listener
// on one address is advertised as it is; on every address (0.0.0.0 or ::)
// the host becomes the first xds.dns_names entry other than localhost, else
// the first xds.ip_sans address that is not loopback, else 127.0.0.1, so
// that the advertised host is one meshca's certificate covers.
func (c Config) AdvertisedXDS(bound string) string {
	if c.XDS.Advertise != "" {
		return c.XDS.Advertise
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		return bound
	}
	for _, n := range c.XDS.DNSNames {
		if n != "localhost" {
			return net.JoinHostPort(n, port)
		}
	}
	for _, a := range c.XDS.IPSANs {
		if ip := net.ParseIP(a); ip != nil && !ip.IsLoopback() {
			return net.JoinHostPort(a, port)
		}
	}
	return net.JoinHostPort("127.0.0.1", port)
}
