package validate_test

import (
	"errors"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/meshca/internal/validate"
)

const hcmType = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// hcm returns a valid HCM; mutate adjusts it before packing.
func hcm(t *testing.T, mutate func(*hcmv3.HttpConnectionManager)) *hcmv3.HttpConnectionManager {
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: "ingress_http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			},
			RouteConfigName: "local_route",
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})},
		}},
	}
	if mutate != nil {
		mutate(h)
	}
	return h
}

func listener(t *testing.T, typedConfig *anypb.Any) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name: "https",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8443},
		}}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typedConfig},
			}},
		}},
	}
}

func cluster(t *testing.T, tlsCtx *tlsv3.UpstreamTlsContext, opts *httpv3.HttpProtocolOptions) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 "backend",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(5e9),
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(t, opts),
		},
		TransportSocket: &corev3.TransportSocket{
			Name:       "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, tlsCtx)},
		},
	}
}

func upstreamTLS(sni string) *tlsv3.UpstreamTlsContext {
	return &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
				Name: "spiffe://mesh.local/web",
				SdsConfig: &corev3.ConfigSource{
					ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
					ResourceApiVersion:    corev3.ApiVersion_V3,
				},
			}},
		},
	}
}

func http2Options() *httpv3.HttpProtocolOptions {
	return &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	}
}

func TestMessage(t *testing.T) {
	tests := []struct {
		name string
		msg  func(t *testing.T) proto.Message
		want []string // substrings of the error; nil means valid
		is   error
	}{
		{
			name: "valid listener with HCM and router",
			msg:  func(t *testing.T) proto.Message { return listener(t, mustAny(t, hcm(t, nil))) },
		},
		{
			name: "HCM with empty stat_prefix inside a listener",
			msg: func(t *testing.T) proto.Message {
				return listener(t, mustAny(t, hcm(t, func(h *hcmv3.HttpConnectionManager) { h.StatPrefix = "" })))
			},
			want: []string{"filter_chains[0].filters[0].typed_config (" + hcmType + "): invalid HttpConnectionManager.StatPrefix: value length must be at least 1 runes"},
		},
		{
			name: "unknown type URL",
			msg: func(t *testing.T) proto.Message {
				return listener(t, &anypb.Any{TypeUrl: "type.googleapis.com/example.NotLinked", Value: []byte{}})
			},
			want: []string{"filter_chains[0].filters[0].typed_config", `"type.googleapis.com/example.NotLinked"`, "not registered"},
			is:   validate.ErrUnregisteredType,
		},
		{
			name: "invalid message in an Any inside an Any",
			msg: func(t *testing.T) proto.Message {
				// The router filter slot holds an UpstreamTlsContext with a
				// 300-byte SNI: only a walk into both Anys can find it.
				return listener(t, mustAny(t, hcm(t, func(h *hcmv3.HttpConnectionManager) {
					h.HttpFilters[0].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, upstreamTLS(strings.Repeat("a", 300)))}
				})))
			},
			want: []string{"filter_chains[0].filters[0].typed_config.http_filters[0].typed_config (envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext): invalid UpstreamTlsContext.Sni"},
		},
		{
			name: "valid cluster with UpstreamTlsContext and HTTP/2 options",
			msg:  func(t *testing.T) proto.Message { return cluster(t, upstreamTLS("meshca.internal"), http2Options()) },
		},
		{
			name: "cluster with invalid transport socket",
			msg: func(t *testing.T) proto.Message {
				return cluster(t, upstreamTLS(strings.Repeat("a", 256)), http2Options())
			},
			want: []string{"transport_socket.typed_config (envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext): invalid UpstreamTlsContext.Sni"},
		},
		{
			name: "invalid Any in a map value",
			msg: func(t *testing.T) proto.Message {
				return cluster(t, upstreamTLS("meshca.internal"), &httpv3.HttpProtocolOptions{})
			},
			want: []string{`typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] (envoy.extensions.upstreams.http.v3.HttpProtocolOptions): invalid HttpProtocolOptions.UpstreamProtocolOptions: value is required`},
		},
		{
			name: "top-level rules still apply",
			msg: func(t *testing.T) proto.Message {
				c := cluster(t, upstreamTLS("meshca.internal"), http2Options())
				c.Name = ""
				return c
			},
			want: []string{"invalid Cluster.Name"},
		},
		{
			name: "several problems are all reported",
			msg: func(t *testing.T) proto.Message {
				c := cluster(t, upstreamTLS(strings.Repeat("a", 256)), &httpv3.HttpProtocolOptions{})
				c.Name = ""
				return c
			},
			want: []string{"invalid Cluster.Name", "transport_socket.typed_config", "typed_extension_protocol_options["},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validate.Message(tt.msg(t))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Message() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Message() = nil, want an error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Message() = %q, want it to contain %q", err, w)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
		})
	}
}

// TestValidateAllAloneMissesAny pins the fact this package exists for: if
// PGV ever starts descending into Any, Message can be simplified.
func TestValidateAllAloneMissesAny(t *testing.T) {
	l := listener(t, mustAny(t, hcm(t, func(h *hcmv3.HttpConnectionManager) { h.StatPrefix = "" })))
	if err := l.ValidateAll(); err != nil {
		t.Fatalf("Listener.ValidateAll() = %v; PGV now descends into Any", err)
	}
	if err := validate.Message(l); err == nil {
		t.Fatal("Message() = nil for a listener wrapping an invalid HCM")
	}
}

func TestMessageNil(t *testing.T) {
	if err := validate.Message(nil); err == nil {
		t.Fatal("Message(nil) = nil, want an error")
	}
	var l *listenerv3.Listener
	if err := validate.Message(l); err == nil {
		t.Fatal("Message(typed nil) = nil, want an error")
	}
}
