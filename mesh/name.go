package mesh

import (
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// resourceName is the name xDS knows a resource by: a
// ClusterLoadAssignment's cluster name, any other resource's name. It is
// go-control-plane's cache.GetResourceName, kept here so that the node
// commands, which use this package, do not link the snapshot cache.
func resourceName(r types.Resource) string {
	switch v := r.(type) {
	case *endpointv3.ClusterLoadAssignment:
		return v.GetClusterName()
	case interface{ GetName() string }:
		return v.GetName()
	}
	return ""
}
