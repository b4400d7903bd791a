package layout

import "testing"

// TestAgentImportsNoServerPackage keeps the node agent a node: it reaches
// meshca over the node service and SDS only, never through the server's
// own packages (which would put the store, the CA or their keys in the
// process that runs on every node).
func TestAgentImportsNoServerPackage(t *testing.T) {
	server := []string{"internal/app", "internal/store", "internal/registry", "internal/authority",
		"internal/nodeconfig", "internal/admin", "internal/seal", "ca", "xds"}
	for name, f := range parseDir(t, "internal/agent") {
		for _, p := range server {
			if importName(f, module+p) != "" {
				t.Errorf("internal/agent/%s imports %s", name, p)
			}
		}
	}
}
