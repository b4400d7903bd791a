package mesh

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/validate"
)

// refs is what a node's resources point at, collected from the protos
// themselves (inside every Any), so the checks see what clients will see.
type refs struct {
	rds        []string // HCM RDS route config names
	clusters   []string // clusters named by route actions
	certs      []string // tls_certificate_sds_secret_configs
	validation []string // validation context SDS secrets
	instances  []string // certificate provider instances (grpc agent nodes)
}

// check validates every resource (PGV rules, inside every typed_config)
// and the references between them, and fills res.Secrets:
//   - every RDS name a listener uses has its RouteConfiguration, and every
//     RouteConfiguration is used (ADS clients are held when the snapshot
//     has more than they ask for);
//   - every cluster a route names exists; every EDS cluster has its
//     ClusterLoadAssignment and every assignment its cluster;
//   - certificate secrets are SPIFFE IDs of identities the node holds and
//     validation secrets are the trust bundle;
//   - certificate provider instances are those of identities the node
//     holds (instances, by agentfiles.Instance);
//   - listeners have addresses (or an api_listener) and no two share a port.
func check(res *Resources, td spiffeid.TrustDomain, held, instances map[string]bool) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidResource, fmt.Sprintf(format, args...)))
	}
	names := map[string]map[string]bool{}
	var r refs
	for _, t := range resourceTypes {
		names[t] = map[string]bool{}
		for _, x := range res.ByType[t] {
			name := cachev3.GetResourceName(x)
			if name == "" {
				bad("%s without a name", typeName(t))
			}
			if names[t][name] {
				bad("two %s resources named %q", typeName(t), name)
			}
			names[t][name] = true
			if err := validate.Message(x); err != nil {
				bad("%s %q: %v", typeName(t), name, err)
			}
			collect(x.ProtoReflect(), &r)
		}
	}
	for _, n := range r.rds {
		if !names[resource.RouteType][n] {
			bad("a listener uses route config %q, which is missing", n)
		}
	}
	for n := range names[resource.RouteType] {
		if !slices.Contains(r.rds, n) {
			bad("route config %q is not used by any listener", n)
		}
	}
	for _, n := range r.clusters {
		if !names[resource.ClusterType][n] {
			bad("a route sends to cluster %q, which is missing", n)
		}
	}
	eds := map[string]bool{}
	for _, x := range res.ByType[resource.ClusterType] {
		c := x.(*clusterv3.Cluster)
		if c.GetType() == clusterv3.Cluster_EDS {
			n := c.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = c.GetName()
			}
			eds[n] = true
			if !names[resource.EndpointType][n] {
				bad("EDS cluster %q has no load assignment", n)
			}
		}
	}
	for _, x := range res.ByType[resource.EndpointType] {
		cla := x.(*endpointv3.ClusterLoadAssignment)
		if !eds[cla.GetClusterName()] {
			bad("load assignment %q belongs to no EDS cluster", cla.GetClusterName())
		}
		for _, l := range cla.GetEndpoints() {
			if l.GetLocality() == nil || l.GetLoadBalancingWeight().GetValue() == 0 {
				bad("load assignment %q: a locality group without locality or weight", cla.GetClusterName())
			}
		}
	}
	secrets := map[string]bool{}
	for _, n := range r.certs {
		if !held[n] {
			bad("certificate secret %q is not the SPIFFE ID of an identity the node holds", n)
		}
		secrets[n] = true
	}
	for _, n := range r.validation {
		if n != td.IDString() {
			bad("validation secret %q is not the trust bundle %q", n, td.IDString())
		}
		secrets[n] = true
	}
	for _, n := range r.instances {
		if !instances[n] {
			bad("certificate provider instance %q is not that of an identity the node holds", n)
		}
	}
	ports := map[uint32][]string{}
	for _, x := range res.ByType[resource.ListenerType] {
		l := x.(*listenerv3.Listener)
		if l.GetApiListener() != nil {
			continue
		}
		sa := l.GetAddress().GetSocketAddress()
		if sa == nil {
			bad("listener %q has no address", l.GetName())
			continue
		}
		for _, other := range ports[sa.GetPortValue()] {
			if other == sa.GetAddress() || other == "0.0.0.0" || sa.GetAddress() == "0.0.0.0" {
				errs = append(errs, fmt.Errorf("%w: two listeners on %s", ErrConflict,
					net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))))
			}
		}
		ports[sa.GetPortValue()] = append(ports[sa.GetPortValue()], sa.GetAddress())
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	res.Secrets = res.Secrets[:0]
	for n := range secrets {
		res.Secrets = append(res.Secrets, n)
	}
	slices.Sort(res.Secrets)
	return nil
}

// collect walks m, unpacking every Any, and records references.
func collect(m protoreflect.Message, r *refs) {
	switch x := m.Interface().(type) {
	case *hcmv3.Rds:
		r.rds = append(r.rds, x.GetRouteConfigName())
	case *routev3.RouteAction:
		if c := x.GetCluster(); c != "" {
			r.clusters = append(r.clusters, c)
		}
		for _, w := range x.GetWeightedClusters().GetClusters() {
			r.clusters = append(r.clusters, w.GetName())
		}
	case *tlsv3.CommonTlsContext:
		for _, s := range x.GetTlsCertificateSdsSecretConfigs() {
			r.certs = append(r.certs, s.GetName())
		}
		if s := x.GetValidationContextSdsSecretConfig(); s != nil {
			r.validation = append(r.validation, s.GetName())
		}
		if s := x.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); s != nil {
			r.validation = append(r.validation, s.GetName())
		}
	case *tlsv3.CertificateProviderPluginInstance:
		r.instances = append(r.instances, x.GetInstanceName())
	case *anypb.Any:
		inner, err := x.UnmarshalNew()
		if err == nil { // unregistered types are validate.Message's to report
			collect(inner.ProtoReflect(), r)
		}
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			for i := 0; i < v.List().Len(); i++ {
				collect(v.List().Get(i).Message(), r)
			}
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				collect(mv.Message(), r)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
			collect(v.Message(), r)
		}
		return true
	})
}
