package mesh

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// MeshcaCluster is the static cluster of every Envoy bootstrap meshca
// writes: the mTLS connection to meshca, used for xDS and the sinks.
const MeshcaCluster = "meshca_xds"

// accessLogName is the log name Envoy reports to meshca.
const accessLogName = "meshca"

// addAccessLogs makes every HTTP connection manager of Envoy listeners
// send its access log to meshca's access-log service.
func addAccessLogs(listeners []types.Resource) {
	cfg := mustAny(&grpclogv3.HttpGrpcAccessLogConfig{CommonConfig: &grpclogv3.CommonGrpcAccessLogConfig{
		LogName:             accessLogName,
		TransportApiVersion: corev3.ApiVersion_V3,
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: MeshcaCluster}}},
	}})
	for _, r := range listeners {
		l, ok := r.(*listenerv3.Listener)
		if !ok {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(h) != nil {
					continue
				}
				h.AccessLog = append(h.AccessLog, &accesslogv3.AccessLog{
					Name:       "envoy.access_loggers.http_grpc",
					ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg},
				})
				f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(h)}
			}
		}
	}
}
