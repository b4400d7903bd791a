package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/meshca/meshca/"

// parseDir parses the non-test Go files of dir (relative to the module
// root), by file name.
func parseDir(t *testing.T, dir string) map[string]*ast.File {
	t.Helper()
	path := filepath.Join("..", "..", dir)
	entries, err := os.ReadDir(path)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	out := map[string]*ast.File{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(path, name), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = f
	}
	if len(out) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	return out
}

// importName is the name file f uses for the package at path, or "" when
// it does not import it.
func importName(f *ast.File, path string) string {
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if p != path {
			continue
		}
		if imp.Name != nil {
			return imp.Name.Name
		}
		return path[strings.LastIndex(path, "/")+1:]
	}
	return ""
}

// TestAuthorityAndRegistryDoNotImportEachOther keeps the CA out of the
// registry: the authority does not import the registry, and the registry
// uses of the authority only its lifetime rules (lifetimes.go) and the
// audit action of a rotation's re-keys, which the registry records and the
// rotation counts.
func TestAuthorityAndRegistryDoNotImportEachOther(t *testing.T) {
	authority := parseDir(t, "internal/authority")
	for name, f := range authority {
		if importName(f, module+"internal/registry") != "" {
			t.Errorf("internal/authority/%s imports internal/registry", name)
		}
	}
	// The names lifetimes.go declares, and the re-key action.
	lifetimes := map[string]bool{"ActionCARotateReissue": true}
	f, ok := authority["lifetimes.go"]
	if !ok {
		t.Fatal("internal/authority/lifetimes.go is gone: the list of lifetime rules is out of date")
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil {
				lifetimes[d.Name.Name] = true
			}
		case *ast.GenDecl:
			for _, s := range d.Specs {
				switch s := s.(type) {
				case *ast.TypeSpec:
					lifetimes[s.Name.Name] = true
				case *ast.ValueSpec:
					for _, n := range s.Names {
						lifetimes[n.Name] = true
					}
				}
			}
		}
	}
	used := 0
	for _, f := range parseDir(t, "internal/registry") {
		name := importName(f, module+"internal/authority")
		if name == "" {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == name {
				used++
				if !lifetimes[sel.Sel.Name] {
					t.Errorf("internal/registry uses authority.%s, which is not a lifetime rule (lifetimes.go): take it through an interface the registry declares", sel.Sel.Name)
				}
			}
			return true
		})
	}
	if used == 0 {
		t.Fatal("internal/registry uses nothing of internal/authority: the check looks at nothing")
	}
}
