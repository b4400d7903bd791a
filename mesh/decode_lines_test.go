package mesh_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/mesh"
)

// A YAML syntax error is reported at the line of the mistake, not at the
// start of the block around it.
func TestParseSyntaxErrorLine(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"key under-indented in a list item",
			"version: 1\nservices:\n  - name: echo\n    endpoints:\n      - address: 10.0.0.1\n        port: 80\n       weight: 2\nroutes: []\n",
			"line 7: did not find expected '-' indicator"},
		{"key between two levels",
			"version: 1\nservices:\n  - name: echo\n    endpoints:\n      - address: 10.0.0.1\n        port: 80\n   protocol: http\nroutes: []\n",
			"line 7: did not find expected '-' indicator"},
		{"after a flow mapping over two lines",
			"version: 1\nservices:\n  - name: echo\n    endpoints: [{address: 10.0.0.1,\n      port: 80}]\n    protocol: http\n   identity: echo\n",
			"line 7: did not find expected '-' indicator"},
		{"unclosed flow list", "version: 1\nservices: [a\n", "line 2: did not find expected ',' or ']'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mesh.Parse([]byte(tt.doc), td)
			var ve *mesh.ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) != 1 || !strings.Contains(ve.Problems[0].Message, tt.want) {
				t.Fatalf("err = %v, want a problem containing %q", err, tt.want)
			}
			t.Logf("%s", ve.Problems[0].Message)
		})
	}
}

// A mesh file must say which format version it is written in.
func TestParseRequiresVersion(t *testing.T) {
	_, err := mesh.Parse([]byte("services:\n  - name: echo\n    endpoints: [{address: 10.0.0.1, port: 80}]\n"), td)
	var ve *mesh.ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Path != "version" || !strings.Contains(ve.Problems[0].Message, `start the file with "version: 1"`) {
		t.Fatalf("err = %v, want one problem at version", err)
	}
	if _, err := mesh.Parse([]byte("version: 1\nservices: []\n"), td); err != nil {
		t.Fatalf("with version: %v", err)
	}
}
