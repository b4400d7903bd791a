package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// publicPackages are the top-level packages, relative to this directory.
var publicPackages = []string{"ca", "sds", "rotation", "xds", "mesh", "nodeapi"}

// TestPublicAPIsExposeNoInternalTypes fails when an exported declaration of
// a top-level package (a function's or method's signature, an exported
// struct field, an interface method, a type or alias, a variable's type or
// value) mentions a package under internal/.
func TestPublicAPIsExposeNoInternalTypes(t *testing.T) {
	for _, pkg := range publicPackages {
		t.Run(pkg, func(t *testing.T) {
			dir := filepath.Join("..", "..", pkg)
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			fset := token.NewFileSet()
			files := 0
			for _, e := range entries {
				name := e.Name()
				if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
					continue
				}
				f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
				if err != nil {
					t.Fatal(err)
				}
				files++
				for _, leak := range internalLeaks(fset, f) {
					t.Errorf("%s", leak)
				}
			}
			if files == 0 {
				t.Fatalf("no Go files in %s: the list of public packages is out of date", dir)
			}
		})
	}
}

// TestInternalLeaksFindsEachKind proves the check can fail: each source
// exposes an internal type in one way the check must see, or not at all.
func TestInternalLeaksFindsEachKind(t *testing.T) {
	const header = "package p\nimport (\n\t\"time\"\n\t\"github.com/meshca/meshca/internal/clock\"\n\tt2 \"github.com/meshca/meshca/internal/telemetry\"\n)\nvar _ time.Time\n"
	tests := []struct {
		name  string
		src   string
		leaks int
	}{
		{"struct field", "type Config struct{ Clock clock.Clock }", 1},
		{"embedded field", "type Config struct{ clock.Clock }", 1},
		{"renamed import", "type Config struct{ Sink *t2.Store }", 1},
		{"nested in a map of funcs", "type Config struct{ F map[string]func([]t2.Entry) }", 1},
		{"function result", "func New() (*clock.Fake, error) { return nil, nil }", 1},
		{"function parameter", "func New(c clock.Clock) {}", 1},
		{"method of an exported type", "type S struct{}\nfunc (S) Now(c clock.Clock) {}", 1},
		{"interface method", "type Joiner interface{ Join() t2.Entry }", 1},
		{"alias", "type Clock = clock.Clock", 1},
		{"variable type", "var Default clock.Clock", 1},
		{"variable value", "var Default = clock.Real{}", 1},
		{"type parameter constraint", "func F[C clock.Clock](c C) {}", 1},
		{"unexported field", "type Config struct{ clock clock.Clock }", 0},
		{"unexported function", "func newClock() clock.Clock { return nil }", 0},
		{"method of an unexported type", "type s struct{}\nfunc (s) Now(c clock.Clock) {}", 0},
		{"internal type used in a body only", "func Now() time.Time { return clock.Real{}.Now() }", 0},
		{"consumer-declared interface", "type Clock interface{ Now() time.Time }\ntype Config struct{ Clock Clock }", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "p.go", header+tt.src, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			if got := internalLeaks(fset, f); len(got) != tt.leaks {
				t.Errorf("found %d leaks %q, want %d", len(got), got, tt.leaks)
			}
		})
	}
}

// internalLeaks returns, sorted, one line for each exported declaration of
// f that mentions a package under internal/.
func internalLeaks(fset *token.FileSet, f *ast.File) []string {
	internal := map[string]string{} // local name -> import path
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if !strings.Contains(path, "/internal/") {
			continue
		}
		name := path[strings.LastIndex(path, "/")+1:]
		if imp.Name != nil {
			name = imp.Name.Name
		}
		internal[name] = path
	}
	if len(internal) == 0 {
		return nil
	}
	var leaks []string
	check := func(decl string, nodes ...ast.Node) {
		for _, n := range nodes {
			if n == nil || isNilNode(n) {
				continue
			}
			ast.Inspect(n, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if id, ok := sel.X.(*ast.Ident); ok {
					if path, ok := internal[id.Name]; ok {
						leaks = append(leaks, fset.Position(sel.Pos()).String()+": "+decl+" mentions "+path+"."+sel.Sel.Name)
					}
				}
				return true
			})
		}
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if !d.Name.IsExported() || (d.Recv != nil && !receiverExported(d.Recv)) {
				continue
			}
			check(d.Name.Name, d.Type)
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				switch s := spec.(type) {
				case *ast.TypeSpec:
					if s.Name.IsExported() {
						check(s.Name.Name, s.TypeParams)
						checkType(s.Name.Name, s.Type, check)
					}
				case *ast.ValueSpec:
					for i, name := range s.Names {
						if !name.IsExported() {
							continue
						}
						check(name.Name, s.Type)
						if s.Type == nil && i < len(s.Values) {
							check(name.Name, s.Values[i])
						}
					}
				}
			}
		}
	}
	sort.Strings(leaks)
	return leaks
}

// checkType checks a declared type, skipping the unexported fields of a
// struct: they are not part of the API.
func checkType(decl string, typ ast.Expr, check func(string, ...ast.Node)) {
	st, ok := typ.(*ast.StructType)
	if !ok {
		check(decl, typ)
		return
	}
	for _, field := range st.Fields.List {
		if len(field.Names) == 0 { // embedded: its type name is the field name
			check(decl, field.Type)
			continue
		}
		for _, name := range field.Names {
			if name.IsExported() {
				check(decl+"."+name.Name, field.Type)
				break
			}
		}
	}
}

// receiverExported reports whether a method's receiver type is exported.
func receiverExported(recv *ast.FieldList) bool {
	if len(recv.List) == 0 {
		return false
	}
	typ := recv.List[0].Type
	for {
		switch t := typ.(type) {
		case *ast.StarExpr:
			typ = t.X
		case *ast.IndexExpr:
			typ = t.X
		case *ast.IndexListExpr:
			typ = t.X
		case *ast.Ident:
			return t.IsExported()
		default:
			return false
		}
	}
}

// isNilNode reports whether n is a typed nil (an absent *ast.FieldList or
// ast.Expr), which ast.Inspect would dereference.
func isNilNode(n ast.Node) bool {
	switch n := n.(type) {
	case *ast.FieldList:
		return n == nil
	case *ast.FuncType:
		return n == nil
	}
	return false
}
