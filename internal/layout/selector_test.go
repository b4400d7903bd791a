package layout

import (
	"strconv"
	"strings"
	"testing"
)

// TestSelectorIsALeaf keeps the selector rules where both sides can take
// them at no cost: internal/selector imports only the standard library,
// and the registry, which validates selectors where they are written,
// reaches none of the node agent's workload packages (their gRPC gate and
// peer credentials).
func TestSelectorIsALeaf(t *testing.T) {
	files := parseDir(t, "internal/selector")
	if len(files) == 0 {
		t.Fatal("internal/selector has no source: the check looks at nothing")
	}
	for name, f := range files {
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.Contains(strings.SplitN(p, "/", 2)[0], ".") {
				t.Errorf("internal/selector/%s imports %s: only the standard library", name, p)
			}
		}
	}
	uses := 0
	for name, f := range parseDir(t, "internal/registry") {
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, module+"internal/workload") || p == module+"internal/peercred" {
				t.Errorf("internal/registry/%s imports %s: take the selector rules from internal/selector", name, p)
			}
		}
		if importName(f, module+"internal/selector") != "" {
			uses++
		}
	}
	if uses == 0 {
		t.Fatal("internal/registry does not import internal/selector: the check looks at nothing")
	}
}
