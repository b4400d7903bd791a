// Package metrics exposes meshca's Prometheus metrics. It is the only
// importer of client_golang. Counters of issuances, renewals and
// revocations are derived from the audit records each store commit
// appends, so each is counted exactly once and only when it is durable.
// Refusals and failures are counted as they happen (ObserveDenial): the
// audit log holds them in aggregate, one record per source and reason per
// interval. Gauges are read from the running parts at scrape time.
package metrics

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/telemetry"
	"github.com/meshca/meshca/mesh"
)

// Expiry is one certificate's NotAfter, labelled.
type Expiry struct {
	Name     string
	NotAfter time.Time
}

// State is read at every scrape.
type State interface {
	// IdentityExpiries returns each active identity's current NotAfter.
	IdentityExpiries() []Expiry
	// CAExpiries returns the NotAfter of the issuer ("issuer") and of each
	// root ("root").
	CAExpiries() []Expiry
	// CRLAge is how old the CRL is; ok is false when none is published.
	CRLAge() (age time.Duration, ok bool)
	// ConnectedNodes counts nodes with an open xDS stream, by kind.
	ConnectedNodes() map[string]int
	// XDSEvents are the xDS server's own counters since start, by event
	// (denied, unauthenticated, auth_failures, invalid_configs, joins,
	// joins_refused): some never reach the audit log, such as a call
	// without a client certificate or a snapshot that failed validation.
	XDSEvents() map[string]int64
	// Connections are what each listener that bounds its connections
	// holds: "xds" (all), "xds_unauthenticated" (those without a node
	// certificate, handshakes included) and "admin_mtls".
	Connections() []Connections
}

// Connections are one listener's connections, as its limiter counts them:
// open now, and the most open at once since start.
type Connections struct {
	Listener   string
	Open, Peak int
}

// Metrics holds every collector.
type Metrics struct {
	reg   *prometheus.Registry
	now   func() time.Time
	state State

	audit    *prometheus.CounterVec
	issued   *prometheus.CounterVec
	renewed  *prometheus.CounterVec
	revoked  prometheus.Counter
	failed   *prometheus.CounterVec
	lint     prometheus.Counter
	denials  *prometheus.CounterVec
	refusals *prometheus.CounterVec
	commit   prometheus.Histogram
	push     *prometheus.HistogramVec
	nacks    *prometheus.CounterVec
	lastNACK *prometheus.GaugeVec

	mu       sync.Mutex
	nackMsgs map[string]string // type -> last message label in use
}

// New registers every metric. now is the clock for expiry gauges; proxy
// stats received by the metrics service are re-exposed from tel.
func New(state State, now func() time.Time, tel *telemetry.Store) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(), now: now, state: state, nackMsgs: map[string]string{},
		audit: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_audit_events_total",
			Help: "Audit records written, by action and outcome."}, []string{"action", "outcome"}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_certificates_issued_total",
			Help: "Certificates issued, by kind (identity, node, server, csr, agent)."}, []string{"kind"}),
		renewed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_certificates_renewed_total",
			Help: "Certificates renewed, by who asked (rotation, operator, node, ca_rotation)."}, []string{"by"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshca_revocations_total",
			Help: "Identities and nodes revoked."}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_certificate_failures_total",
			Help: "Issuance requests that failed or were refused, by action and reason (lint, denied, failed)."}, []string{"action", "reason"}),
		lint: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshca_lint_rejections_total",
			Help: "Certificates refused by the zlint gate: never stored or served."}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_authorization_denials_total",
			Help: "Requests refused for lack of rights, by where (xds.request, xds.auth, node.auth, admin.auth, node.join...)."}, []string{"where"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_refusals_total",
			Help: "Every refused or failed request, exactly, by audit action, outcome (denied, failed) and reason (the audit log aggregates repeats)."}, []string{"action", "outcome", "reason"}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshca_store_commit_duration_seconds",
			Help: "Time from a store update to its durable commit (group commit wait included).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		push: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meshca_xds_push_duration_seconds",
			Help: "Time from publishing a node's new configuration to the node's ACK, by resource type.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_xds_nacks_total",
			Help: "Configurations rejected by proxies, by resource type."}, []string{"type"}),
		lastNACK: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshca_xds_last_nack_info",
			Help: "The last NACK message per resource type (value 1); value 0 with an empty message before any."}, []string{"type", "message"}),
	}
	// The node metrics exist from the start, at zero, so that alerts and
	// dashboards can be written before the first node connects.
	for _, t := range xdsTypes {
		m.push.WithLabelValues(t)
		m.nacks.WithLabelValues(t)
		m.lastNACK.WithLabelValues(t, "").Set(0)
		m.nackMsgs[t] = ""
	}
	m.reg.MustRegister(m.audit, m.issued, m.renewed, m.revoked, m.failed, m.lint, m.denials, m.refusals, m.commit, m.push, m.nacks, m.lastNACK,
		&gauges{m: m}, &proxyStats{tel: tel}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// xdsTypes are the resource types meshca serves, as the type label names
// them; nodeKinds the node kinds.
var (
	xdsTypes  = []string{"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment", "Secret"}
	nodeKinds = mesh.Kinds()
)

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// ObserveCommit counts the audit records of one durable store commit and
// the successes among them; it fits store.Config.OnCommit. Refusals are
// counted by ObserveDenial, since their records are aggregated.
func (m *Metrics) ObserveCommit(events []store.Event, took time.Duration) {
	m.commit.Observe(took.Seconds())
	for _, e := range events {
		m.audit.WithLabelValues(e.Action, e.Outcome).Inc()
		if e.Outcome == store.OutcomeOK {
			m.countOK(e)
		}
	}
}

// ObserveDenial counts one refused (outcome denied) or failed request as
// it happens; it fits registry.Config.OnDenial. reason is a small fixed
// set (registry.Reason*).
func (m *Metrics) ObserveDenial(action, outcome, reason string) {
	m.refusals.WithLabelValues(action, outcome, reason).Inc()
	switch outcome {
	case store.OutcomeDenied:
		if authz(action) {
			m.denials.WithLabelValues(action).Inc()
		} else if issuing(action) {
			m.failed.WithLabelValues(action, "denied").Inc()
		}
	case store.OutcomeFailed:
		r := "failed"
		if reason == "lint" {
			r = "lint"
			m.lint.Inc()
		}
		m.failed.WithLabelValues(action, r).Inc()
	}
}

func (m *Metrics) countOK(e store.Event) {
	switch e.Action {
	case "cert.issue":
		kind := "identity"
		switch {
		case e.Identity == "meshca":
			kind = "server"
		case strings.HasPrefix(e.Detail, "from CSR"):
			kind = "csr"
		}
		m.issued.WithLabelValues(kind).Inc()
	case "identity.reissue":
		m.issued.WithLabelValues("identity").Inc()
		by := "operator"
		if e.Actor == "rotation" {
			by = "rotation"
		}
		m.renewed.WithLabelValues(by).Inc()
	case "ca.rotate.reissue":
		m.issued.WithLabelValues("identity").Inc()
		m.renewed.WithLabelValues("ca_rotation").Inc()
	case "cert.sign": // an agent node's CSR
		m.issued.WithLabelValues("agent").Inc()
	case "node.join":
		m.issued.WithLabelValues("node").Inc()
	case "node.renew":
		m.issued.WithLabelValues("node").Inc()
		m.renewed.WithLabelValues("node").Inc()
	case "identity.revoke", "node.revoke":
		m.revoked.Inc()
	}
}

func authz(action string) bool {
	switch action {
	case "xds.request", "xds.auth", "node.auth", "admin.auth", "node.join", "node.renew", "cert.sign":
		return true
	}
	return false
}

func issuing(action string) bool {
	switch action {
	case "identity.add", "cert.issue", "identity.reissue", "ca.rotate.reissue":
		return true
	}
	return false
}

// ObservePush records how long a node took to ACK a new configuration.
func (m *Metrics) ObservePush(typeURL string, d time.Duration) {
	m.push.WithLabelValues(shortType(typeURL)).Observe(d.Seconds())
}

// ObserveNACK counts a rejected configuration and keeps its message.
func (m *Metrics) ObserveNACK(typeURL, message string) {
	t := shortType(typeURL)
	if c, err := m.nacks.GetMetricWithLabelValues(t); err == nil {
		c.Inc()
	}
	// Label values must be valid UTF-8 and bounded: the message is the
	// proxy's text.
	if len(message) > 200 {
		message = message[:200]
	}
	message = strings.ToValidUTF8(message, "?")
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.nackMsgs[t]; ok {
		m.lastNACK.DeleteLabelValues(t, old)
	}
	if g, err := m.lastNACK.GetMetricWithLabelValues(t, message); err == nil {
		m.nackMsgs[t] = message
		g.Set(1)
	}
}

func shortType(typeURL string) string {
	if i := strings.LastIndex(typeURL, "."); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// gauges reads State at scrape time.
type gauges struct{ m *Metrics }

var (
	descIdentityExpiry = prometheus.NewDesc("meshca_certificate_expiry_seconds",
		"Seconds until the current certificate of each identity expires (negative when expired).", []string{"identity"}, nil)
	descCAExpiry = prometheus.NewDesc("meshca_ca_expiry_seconds",
		"Seconds until each CA certificate in use expires.", []string{"role", "serial"}, nil)
	descCRLAge = prometheus.NewDesc("meshca_crl_age_seconds",
		"Age of the published CRL (absent when none is published).", nil, nil)
	descNodes = prometheus.NewDesc("meshca_nodes_connected",
		"Nodes with an open xDS stream, by kind.", []string{"kind"}, nil)
	descXDSEvents = prometheus.NewDesc("meshca_xds_events_total",
		"xDS server events since start, by event (denied, unauthenticated, auth_failures, invalid_configs, joins, joins_refused).", []string{"event"}, nil)
	descConnsOpen = prometheus.NewDesc("meshca_connections_open",
		"Connections open now, by listener (xds, xds_unauthenticated, admin_mtls), as the listener's limit counts them.", []string{"listener"}, nil)
	descConnsPeak = prometheus.NewDesc("meshca_connections_peak",
		"The most connections open at once since start, by listener (xds, xds_unauthenticated, admin_mtls): never above the listener's limit.", []string{"listener"}, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- descIdentityExpiry
	ch <- descCAExpiry
	ch <- descCRLAge
	ch <- descNodes
	ch <- descXDSEvents
	ch <- descConnsOpen
	ch <- descConnsPeak
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	now := g.m.now()
	for _, e := range g.m.state.IdentityExpiries() {
		ch <- prometheus.MustNewConstMetric(descIdentityExpiry, prometheus.GaugeValue, e.NotAfter.Sub(now).Seconds(), e.Name)
	}
	for _, e := range g.m.state.CAExpiries() {
		role, serial, _ := strings.Cut(e.Name, ":")
		ch <- prometheus.MustNewConstMetric(descCAExpiry, prometheus.GaugeValue, e.NotAfter.Sub(now).Seconds(), role, serial)
	}
	if age, ok := g.m.state.CRLAge(); ok {
		ch <- prometheus.MustNewConstMetric(descCRLAge, prometheus.GaugeValue, age.Seconds())
	}
	connected := g.m.state.ConnectedNodes()
	for _, kind := range nodeKinds {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(connected[kind]), kind)
	}
	for kind, n := range connected {
		if !slices.Contains(nodeKinds, kind) {
			ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(n), kind)
		}
	}
	for event, n := range g.m.state.XDSEvents() {
		ch <- prometheus.MustNewConstMetric(descXDSEvents, prometheus.CounterValue, float64(n), event)
	}
	for _, c := range g.m.state.Connections() {
		ch <- prometheus.MustNewConstMetric(descConnsOpen, prometheus.GaugeValue, float64(c.Open), c.Listener)
		ch <- prometheus.MustNewConstMetric(descConnsPeak, prometheus.GaugeValue, float64(c.Peak), c.Listener)
	}
}

// maxProxySamples bounds the stats re-exposed per node, so a proxy cannot
// blow up a scrape.
const maxProxySamples = 5000

// proxyStats re-exposes the counters and gauges proxies send to the
// metrics service, prefixed envoy_ and labelled with the authenticated
// node. Prometheus requires one type and one label set per name, and
// nodes may disagree (or one may lie to hide another's series): per name,
// the shape (type and label names) that most nodes send wins, ties going
// to the first node by name, and only the samples of other shapes are
// left out, counted per node in meshca_proxy_samples_dropped. A node's
// bad sample costs only that node's sample.
type proxyStats struct{ tel *telemetry.Store }

var descProxyDropped = prometheus.NewDesc("meshca_proxy_samples_dropped",
	"Stats samples of a node left out of this scrape: their type or label names disagree with what most nodes send under that name, or they are invalid.", []string{"node"}, nil)

// Describe sends nothing: the families are only known at scrape time.
func (p *proxyStats) Describe(chan<- *prometheus.Desc) {}

func (p *proxyStats) Collect(ch chan<- prometheus.Metric) {
	if p.tel == nil {
		return
	}
	type sample struct {
		node   string
		values []string
		v      float64
	}
	// shape is what one node sends under one name.
	type shape struct {
		vt     prometheus.ValueType
		labels []string
		help   string
		nodes  int
		s      []sample
	}
	families := map[string][]*shape{} // name -> shapes in order of first node
	dropped := map[string]int{}
	var nodes []string
	p.tel.Stats(func(node string, fams []*dto.MetricFamily) {
		nodes = append(nodes, node)
		dropped[node] += 0
		perNode := 0
		seen := map[*shape]bool{}
		for _, f := range fams {
			var vt prometheus.ValueType
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				vt = prometheus.CounterValue
			case dto.MetricType_GAUGE:
				vt = prometheus.GaugeValue
			default:
				continue
			}
			name := "envoy_" + sanitize(f.GetName())
			for _, m := range f.GetMetric() {
				if perNode >= maxProxySamples {
					return
				}
				perNode++
				labels, values := []string{"node"}, []string{node}
				for _, lp := range m.GetLabel() {
					labels = append(labels, sanitize(lp.GetName()))
					v := lp.GetValue()
					if len(v) > 128 {
						v = v[:128]
					}
					values = append(values, strings.ToValidUTF8(v, "?"))
				}
				var sh *shape
				for _, c := range families[name] {
					if c.vt == vt && slices.Equal(c.labels, labels) {
						sh = c
						break
					}
				}
				if sh == nil {
					help := f.GetHelp()
					if help == "" {
						help = "Envoy stat " + f.GetName() + " sent by the node's proxy."
					}
					sh = &shape{vt: vt, labels: labels, help: strings.ToValidUTF8(help, "?")}
					families[name] = append(families[name], sh)
				}
				if !seen[sh] {
					seen[sh] = true
					sh.nodes++
				}
				v := m.GetCounter().GetValue()
				if vt == prometheus.GaugeValue {
					v = m.GetGauge().GetValue()
				}
				sh.s = append(sh.s, sample{node: node, values: values, v: v})
			}
		}
	})
	for name, shapes := range families {
		win := shapes[0]
		for _, sh := range shapes[1:] {
			if sh.nodes > win.nodes {
				win = sh
			}
		}
		for _, sh := range shapes {
			if sh != win {
				for _, smp := range sh.s {
					dropped[smp.node]++
				}
			}
		}
		// The first node's help text for the winning shape: one help per name.
		desc := prometheus.NewDesc(name, win.help, win.labels, nil)
		seen := map[string]bool{}
		for _, smp := range win.s {
			key := strings.Join(smp.values, "\x00")
			if seen[key] {
				dropped[smp.node]++
				continue
			}
			seen[key] = true
			m, err := prometheus.NewConstMetric(desc, win.vt, smp.v, smp.values...)
			if err != nil {
				dropped[smp.node]++
				continue
			}
			ch <- m
		}
	}
	for _, node := range nodes {
		ch <- prometheus.MustNewConstMetric(descProxyDropped, prometheus.GaugeValue, float64(dropped[node]), node)
	}
}

// sanitize makes an Envoy stat or tag name a valid Prometheus name.
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= '0' && c <= '9' && i > 0
		if !ok {
			b[i] = '_'
		}
	}
	return string(b)
}
