// Package validate checks generated Envoy resources (protobuf messages:
// listeners, clusters, secrets, bootstrap files) before meshca publishes or
// writes them. It runs the generated protoc-gen-validate rules
// (ValidateAll) and, unlike ValidateAll alone, also unpacks every
// google.protobuf.Any (every typed_config) and validates the message
// inside, at any depth.
//
// Elsewhere "validate" means other things, each in its own place: an
// operator's mesh document is checked by mesh.Validate (after
// mesh.Defaults), the server configuration by config.Validate, lifetime
// rules by authority.Lifetimes.Validate; sds.ValidationSecret is Envoy's
// validation context (the trust bundle and CRLs a peer is checked
// against), not a check at all.
//
// Caveats: only the PGV rules are checked. Semantic rules that PGV does not
// express (a Secret with an empty name, a listener without an address) are
// the caller's job. Types carried in an Any must be registered in
// protoregistry.GlobalTypes: linked into the binary, as they are by the
// code that builds them (mesh) or parses them (envoycheck, for the files a
// node writes). This package links none itself, so that a binary that
// validates only Secrets (the node agent's, through sds) does not carry
// Envoy's listener, route and cluster protos; an Any whose type is not
// linked is refused with ErrUnregisteredType, never passed unchecked.
package validate

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// ErrUnregisteredType reports an Any whose type URL names no linked type.
var ErrUnregisteredType = errors.New("type is not registered")

// validator is implemented by every generated Envoy type.
type validator interface{ ValidateAll() error }

const anyFullName protoreflect.FullName = "google.protobuf.Any"

// Message runs ValidateAll on m and, recursively, on the message inside every
// google.protobuf.Any found in m (in singular, repeated, map and oneof
// fields, and inside other Anys). Errors name the field path, e.g.
// "filter_chains[0].filters[0].typed_config (envoy...HttpConnectionManager): ...".
// All problems found are joined into one error.
func Message(m proto.Message) error {
	if m == nil || !m.ProtoReflect().IsValid() {
		return errors.New("nil message")
	}
	var errs []error
	if err := validateOne(m); err != nil {
		errs = append(errs, err)
	}
	walk(m.ProtoReflect(), "", &errs)
	return errors.Join(errs...)
}

func validateOne(m proto.Message) error {
	v, ok := m.(validator)
	if !ok {
		// Well-known types (Struct, Duration...) carry no PGV rules.
		return nil
	}
	return v.ValidateAll()
}

// walk visits the set fields of m in declaration order (stable errors).
func walk(m protoreflect.Message, path string, errs *[]error) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		name := join(path, string(fd.Name()))
		v := m.Get(fd)
		switch {
		case fd.IsList():
			if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
				continue
			}
			l := v.List()
			for j := 0; j < l.Len(); j++ {
				visit(l.Get(j).Message(), fmt.Sprintf("%s[%d]", name, j), errs)
			}
		case fd.IsMap():
			vd := fd.MapValue()
			if vd.Kind() != protoreflect.MessageKind && vd.Kind() != protoreflect.GroupKind {
				continue
			}
			mp := v.Map()
			keys := make([]protoreflect.MapKey, 0, mp.Len())
			mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) })
			for _, k := range keys {
				visit(mp.Get(k).Message(), fmt.Sprintf("%s[%q]", name, k.String()), errs)
			}
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			visit(v.Message(), name, errs)
		}
	}
}

// visit descends into a nested message, unpacking it first if it is an Any.
func visit(m protoreflect.Message, path string, errs *[]error) {
	if m.Descriptor().FullName() != anyFullName {
		walk(m, path, errs)
		return
	}
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		// A dynamic Any: copy it into the concrete type.
		a = new(anypb.Any)
		proto.Merge(a, m.Interface())
	}
	inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
	if err != nil {
		if errors.Is(err, protoregistry.NotFound) {
			*errs = append(*errs, fmt.Errorf("%s: %q: %w", path, a.GetTypeUrl(), ErrUnregisteredType))
		} else {
			*errs = append(*errs, fmt.Errorf("%s: unpack %q: %v", path, a.GetTypeUrl(), err))
		}
		return
	}
	typeName := inner.ProtoReflect().Descriptor().FullName()
	if err := validateOne(inner); err != nil {
		*errs = append(*errs, fmt.Errorf("%s (%s): %w", path, typeName, err))
	}
	// An Any may itself hold an Any: visit unpacks that too.
	visit(inner.ProtoReflect(), path, errs)
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}
