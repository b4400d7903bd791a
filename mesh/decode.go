package mesh

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/meshca/meshca/internal/text"
)

// Limits that keep a hostile document from costing much.
const (
	MaxFileSize    = 4 << 20
	maxProblems    = 200
	maxYAMLDepth   = 32
	maxListEntries = 10000
	// maxRefineSize bounds the files whose syntax errors are located by
	// parsing prefixes (a few parses each).
	maxRefineSize = 256 << 10
)

// Parse decodes and validates a mesh document for trust domain td. On any
// problem it returns a *ValidationError listing every problem found, each
// with its path; errors.Is(err, ErrInvalid) is then true. The returned Mesh
// has every default filled in. Build uses a Mesh from Parse as it is, so
// it must not be modified afterwards (Marshal and Parse again instead).
func Parse(data []byte, td spiffeid.TrustDomain) (*Mesh, error) {
	m, problems := decode(data)
	if m == nil {
		return nil, &ValidationError{Problems: problems}
	}
	// Validate what decoded even when some keys did not, so that one run
	// reports every problem; a path that already failed to decode is not
	// reported twice.
	Defaults(m)
	if err := m.Validate(td); err != nil {
		var ve *ValidationError
		if !errors.As(err, &ve) {
			return nil, err
		}
		seen := map[string]bool{}
		for _, p := range problems {
			seen[p.Path] = true
		}
		for _, p := range ve.Problems {
			if !seen[p.Path] {
				problems = append(problems, p)
			}
		}
	}
	if len(problems) > 0 {
		return nil, &ValidationError{Problems: problems}
	}
	m.parsed, m.parsedTD = m, td
	return m, nil
}

// Marshal returns the canonical YAML of m; Parse(Marshal(m)) gives m back.
func (m *Mesh) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("mesh: marshal: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("mesh: marshal: %w", err)
	}
	return buf.Bytes(), nil
}

// decode reads one YAML document strictly: unknown keys, repeated keys,
// wrong types, anchors and extra documents are problems.
func decode(data []byte) (*Mesh, []Problem) {
	if len(data) > MaxFileSize {
		return nil, []Problem{{Message: fmt.Sprintf("the file is %d bytes, the limit is %d", len(data), MaxFileSize)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, []Problem{{Message: "the file is empty: a mesh needs at least a services key"}}
		}
		return nil, []Problem{{Message: "not valid YAML: " + syntaxError(data, err)}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, []Problem{{Message: "only one YAML document is allowed (remove the extra ---)"}}
	}
	d := &decoder{}
	m := new(Mesh)
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	d.value(root, reflect.ValueOf(m).Elem(), "", 0)
	if root.Kind == yaml.MappingNode && !hasKey(root, "version") {
		d.add("version", "missing: start the file with \"version: %d\" (the format version)", FormatVersion)
	}
	return m, d.problems
}

// hasKey reports whether a mapping node has key.
func hasKey(n *yaml.Node, key string) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Kind == yaml.ScalarNode && n.Content[i].Value == key {
			return true
		}
	}
	return false
}

type decoder struct {
	problems []Problem
}

func (d *decoder) add(path, format string, args ...any) {
	if len(d.problems) == maxProblems {
		d.problems = append(d.problems, Problem{Message: "too many problems, stopped here"})
	}
	if len(d.problems) > maxProblems {
		return
	}
	d.problems = append(d.problems, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// value decodes n into v, recording every problem under path.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string, depth int) {
	if depth > maxYAMLDepth {
		d.add(path, "nested too deeply")
		return
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		d.add(path, "anchors and aliases (&, *) are not supported: write the value out")
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an explicit null leaves the zero value
	}
	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.value(n, p.Elem(), path, depth+1)
		v.Set(p)
	case reflect.Struct:
		d.mapping(n, v, path, depth)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.add(path, "want a list, got %s", describe(n))
			return
		}
		if len(n.Content) > maxListEntries {
			d.add(path, "%d entries, the limit is %d", len(n.Content), maxListEntries)
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.value(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i), depth+1)
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			d.add(path, "want %s, got %s", kindName(v.Kind()), describe(n))
			return
		}
		if v.Kind() == reflect.String && n.Tag != "!!str" {
			// Keep "port: 80" out of a string field and "name: yes"
			// from being read as something else than intended.
			if n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!bool" {
				d.add(path, "want a string, got %s", describe(n))
				return
			}
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.add(path, "want %s, got %s", kindName(v.Kind()), describe(n))
		}
	}
}

// mapping decodes a YAML mapping into a struct by its yaml tags.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string, depth int) {
	if n.Kind != yaml.MappingNode {
		d.add(path, "want a mapping of keys, got %s", describe(n))
		return
	}
	fields := map[string]int{}
	var known []string
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		fields[name] = i
		known = append(known, name)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.add(path, "a key must be a plain name, got %s", describe(k))
			continue
		}
		key := k.Value
		kp := join(path, key)
		idx, ok := fields[key]
		switch {
		case !ok:
			d.add(kp, "unknown key (known keys here: %s)", strings.Join(known, ", "))
			continue
		case seen[key]:
			d.add(kp, "key appears twice")
			continue
		}
		seen[key] = true
		d.value(val, v.Field(idx), kp, depth+1)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", clip(n.Value))
	}
	return "something else"
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	}
	return "a " + k.String()
}

// clip keeps hostile input from flooding an error message.
func clip(s string) string { return text.Clip(s, 80) }

var yamlErrorLine = regexp.MustCompile(`^yaml: line (\d+): (.+)$`)

// syntaxError words a YAML syntax error with the line of the mistake.
// yaml.v3 reports the line where the enclosing block starts (the parser's
// context mark), which for a bad indentation can be far above the mistake.
// The offending line is the last line of the shortest prefix of the file
// that fails with the very same error: a prefix ending before it parses, or
// fails otherwise. Failing with that error is monotonic past the mistake,
// so a binary search finds it in a few parses.
func syntaxError(data []byte, err error) string {
	msg := err.Error()
	m := yamlErrorLine.FindStringSubmatch(msg)
	if m == nil {
		return strings.TrimPrefix(msg, "yaml: ")
	}
	reported, _ := strconv.Atoi(m[1])
	if len(data) > maxRefineSize {
		return strings.TrimPrefix(msg, "yaml: ")
	}
	ends := lineEnds(data)
	fails := func(k int) bool { // the first k lines fail with msg
		var n yaml.Node
		err := yaml.Unmarshal(data[:ends[k-1]], &n)
		return err != nil && err.Error() == msg
	}
	lo, hi := max(reported, 1), len(ends)
	if lo > hi || !fails(hi) {
		return strings.TrimPrefix(msg, "yaml: ")
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	if lo == reported {
		return strings.TrimPrefix(msg, "yaml: ")
	}
	return fmt.Sprintf("line %d: %s (check the indentation of line %d; the block it belongs to starts on line %d)", lo, m[2], lo, reported)
}

// lineEnds returns the offset just past each line of data.
func lineEnds(data []byte) []int {
	var ends []int
	for i, c := range data {
		if c == '\n' {
			ends = append(ends, i+1)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		ends = append(ends, len(data))
	}
	return ends
}
