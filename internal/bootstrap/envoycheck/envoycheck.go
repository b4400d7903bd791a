// Package envoycheck parses the files internal/bootstrap renders for Envoy
// (envoy.yaml and the file-based SDS files) into Envoy's own protos and
// validates them deep, into every typed_config, as Envoy would on start.
//
// It is the proof that those templates give Envoy valid config: the tests
// of internal/bootstrap run every rendered file through it, and meshca's
// full command line checks envoy.yaml with it again before writing one.
// The node agent's own binary (cmd/meshca-agent) does not link it: Envoy's
// bootstrap protos pull in nearly all of Envoy's config protos, and the
// YAML library with them, whose code the agent's process would map.
//
// Caveats: every type an Any of these files carries must be linked into
// the binary (imports below); an unlinked one is refused as unregistered.
package envoycheck

import (
	"encoding/json"
	"errors"
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	// The typed_configs of envoy.yaml: the stats sink and the static
	// clusters' HTTP/2 options (the TLS context is imported by name).
	_ "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/validate"
)

// ParseEnvoy parses envoy.yaml into a Bootstrap (YAML, then JSON, then
// protojson with the global type registry, refusing unknown fields) and
// validates it deep, into every typed_config.
func ParseEnvoy(yamlText []byte) (*bootstrapv3.Bootstrap, error) {
	b := new(bootstrapv3.Bootstrap)
	if err := unmarshalYAML(yamlText, b); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, bootstrap.EnvoyFile, err)
	}
	if err := validate.Message(b); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, bootstrap.EnvoyFile, err)
	}
	return b, nil
}

// Envoy is ParseEnvoy for a caller that only wants the verdict: the
// check a node command runs on envoy.yaml before writing it.
func Envoy(yamlText []byte) error {
	_, err := ParseEnvoy(yamlText)
	return err
}

// ParseSDS parses a file-based SDS file, shaped like a DiscoveryResponse
// ({resources: [{"@type": ...Secret, name: ..., ...}]}), and validates every
// Secret: the Envoy rules, plus a name and a secret that points at data
// (PGV accepts an empty tls_certificate, Envoy then fails the handshake).
func ParseSDS(yamlText []byte) ([]*tlsv3.Secret, error) {
	resp := new(discoveryv3.DiscoveryResponse)
	if err := unmarshalYAML(yamlText, resp); err != nil {
		return nil, fmt.Errorf("%w: sds file: %v", ErrInvalidConfig, err)
	}
	if len(resp.GetResources()) == 0 {
		return nil, fmt.Errorf("%w: sds file: no resources", ErrInvalidConfig)
	}
	secrets := make([]*tlsv3.Secret, 0, len(resp.GetResources()))
	for i, r := range resp.GetResources() {
		s := new(tlsv3.Secret)
		if err := anypb.UnmarshalTo(r, s, proto.UnmarshalOptions{}); err != nil {
			return nil, fmt.Errorf("%w: sds file: resources[%d]: type %q is not a Secret", ErrInvalidConfig, i, r.GetTypeUrl())
		}
		if err := validate.Message(s); err != nil {
			return nil, fmt.Errorf("%w: sds file: resources[%d]: %v", ErrInvalidConfig, i, err)
		}
		if err := checkSecret(s); err != nil {
			return nil, fmt.Errorf("%w: sds file: resources[%d] (%q): %v", ErrInvalidConfig, i, s.GetName(), err)
		}
		secrets = append(secrets, s)
	}
	return secrets, nil
}

func checkSecret(s *tlsv3.Secret) error {
	if s.GetName() == "" {
		return errors.New("name is empty")
	}
	switch t := s.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		if !hasData(t.TlsCertificate.GetCertificateChain()) {
			return errors.New("tls_certificate.certificate_chain is not set")
		}
		if !hasData(t.TlsCertificate.GetPrivateKey()) && t.TlsCertificate.GetPrivateKeyProvider() == nil {
			return errors.New("tls_certificate.private_key is not set")
		}
	case *tlsv3.Secret_ValidationContext:
		if !hasData(t.ValidationContext.GetTrustedCa()) {
			return errors.New("validation_context.trusted_ca is not set")
		}
	case nil:
		return errors.New("secret has no type (tls_certificate, validation_context...)")
	}
	return nil
}

func hasData(d *corev3.DataSource) bool {
	return d.GetSpecifier() != nil
}

// unmarshalYAML turns YAML into JSON and decodes that with protojson, which
// resolves "@type" through protoregistry.GlobalTypes.
func unmarshalYAML(yamlText []byte, m proto.Message) error {
	var v any
	if err := yaml.Unmarshal(yamlText, &v); err != nil {
		return fmt.Errorf("yaml: %w", err)
	}
	if v == nil {
		return errors.New("empty document")
	}
	v, err := jsonable(v)
	if err != nil {
		return err
	}
	j, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("json: %w", err)
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, m); err != nil {
		return fmt.Errorf("proto: %w", err)
	}
	return nil
}

// jsonable converts the maps yaml.v3 may produce with non-string keys.
func jsonable(v any) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[k] = c
		}
		return x, nil
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("yaml: key %v is not a string", k)
			}
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	case []any:
		for i, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[i] = c
		}
		return x, nil
	default:
		return v, nil
	}
}
