package mesh

import (
	"slices"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
)

// Operations of a Change.
const (
	OpAdd    = "add"
	OpRemove = "remove"
	OpChange = "change"
)

// Change is one resource that differs between two Resources. Type is the
// type URL, Name the resource name, Op one of add, remove, change.
type Change struct{ Type, Name, Op string }

// Diff lists what changes for a node from old to new, sorted by type URL
// and name. Equal resources (proto.Equal) are not listed.
func Diff(old, new Resources) []Change {
	var out []Change
	typeURLs := map[string]bool{}
	for t := range old.ByType {
		typeURLs[t] = true
	}
	for t := range new.ByType {
		typeURLs[t] = true
	}
	for t := range typeURLs {
		before, after := byName(old.ByType[t]), byName(new.ByType[t])
		for name, o := range before {
			n, ok := after[name]
			switch {
			case !ok:
				out = append(out, Change{Type: t, Name: name, Op: OpRemove})
			case !proto.Equal(o, n):
				out = append(out, Change{Type: t, Name: name, Op: OpChange})
			}
		}
		for name := range after {
			if _, ok := before[name]; !ok {
				out = append(out, Change{Type: t, Name: name, Op: OpAdd})
			}
		}
	}
	slices.SortFunc(out, func(a, b Change) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

func byName(rs []types.Resource) map[string]types.Resource {
	m := make(map[string]types.Resource, len(rs))
	for _, r := range rs {
		m[cachev3.GetResourceName(r)] = r
	}
	return m
}
