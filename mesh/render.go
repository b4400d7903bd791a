package mesh

import (
	"bytes"
	"encoding/json"
	"fmt"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// YAML renders the resources as a stream of YAML documents (each one is
// JSON, which YAML accepts), one per resource, in type order (clusters,
// endpoints, listeners, routes) then by name, with a comment naming the
// resource, and the secrets last as a comment. The output is stable across
// builds: protojson's deliberately unstable spacing is normalised.
func (r Resources) YAML() ([]byte, error) {
	var buf bytes.Buffer
	for _, t := range resourceTypes {
		for _, x := range r.ByType[t] {
			b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(x)
			if err != nil {
				return nil, fmt.Errorf("mesh: render %s %q: %w", typeName(t), cachev3.GetResourceName(x), err)
			}
			var compact, pretty bytes.Buffer
			if err := json.Compact(&compact, b); err != nil {
				return nil, fmt.Errorf("mesh: render: %w", err)
			}
			if err := json.Indent(&pretty, compact.Bytes(), "", "  "); err != nil {
				return nil, fmt.Errorf("mesh: render: %w", err)
			}
			fmt.Fprintf(&buf, "--- # %s %s\n%s\n", typeName(t), cachev3.GetResourceName(x), pretty.Bytes())
		}
	}
	fmt.Fprintf(&buf, "# secrets: %q\n", r.Secrets)
	return buf.Bytes(), nil
}
