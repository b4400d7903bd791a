package selector_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/selector"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, want string
		errPart        string // "" for success
	}{
		{name: "uid", in: "uid:1000", want: "uid:1000"},
		{name: "uid leading zeros", in: "uid:01000", want: "uid:1000"},
		{name: "uid zero", in: "uid:0", want: "uid:0"},
		{name: "gid max", in: "gid:4294967295", want: "gid:4294967295"},
		{name: "path", in: "path:/usr/bin/echo", want: "path:/usr/bin/echo"},
		{name: "no colon", in: "uid1000", errPart: "kind:value"},
		{name: "unknown kind", in: "user:alice", errPart: `unknown kind "user"`},
		{name: "uid negative", in: "uid:-1", errPart: "decimal number"},
		{name: "uid too big", in: "uid:4294967296", errPart: "decimal number"},
		{name: "uid empty", in: "uid:", errPart: "decimal number"},
		{name: "gid name", in: "gid:wheel", errPart: "decimal number"},
		{name: "relative path", in: "path:usr/bin/echo", errPart: "absolute, clean"},
		{name: "path with dotdot", in: "path:/usr/bin/../sbin/x", errPart: "absolute, clean"},
		{name: "path trailing slash", in: "path:/usr/bin/", errPart: "absolute, clean"},
		{name: "path empty", in: "path:", errPart: "absolute, clean"},
		{name: "path NUL", in: "path:/usr/bin/a\x00b", errPart: "absolute, clean"},
		{name: "too long", in: "path:/" + strings.Repeat("a", selector.MaxLength), errPart: "at most 1024"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := selector.Parse(tt.in)
			if tt.errPart != "" {
				if err == nil || !errors.Is(err, selector.ErrSelector) || !strings.Contains(err.Error(), tt.errPart) {
					t.Fatalf("Parse(%q) = %v, %v; want an ErrSelector naming %q", tt.in, got, err, tt.errPart)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("Parse(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	got, err := selector.Normalize([]string{"uid:1000", "path:/usr/bin/echo", "uid:01000", "gid:5"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"gid:5", "path:/usr/bin/echo", "uid:1000"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Normalize = %v, want %v", got, want)
	}
	if got, err := selector.Normalize(nil); got != nil || err != nil {
		t.Fatalf("Normalize(nil) = %v, %v; want nil, nil", got, err)
	}
	many := make([]string, selector.MaxSelectors+1)
	for i := range many {
		many[i] = "uid:1"
	}
	if _, err := selector.Normalize(many); !errors.Is(err, selector.ErrSelector) {
		t.Fatalf("Normalize of %d selectors: err = %v, want ErrSelector", len(many), err)
	}
	if _, err := selector.Normalize([]string{"uid:1", "bogus"}); err == nil || !strings.Contains(err.Error(), `"bogus"`) {
		t.Fatalf("Normalize with a bad selector: err = %v, want it named", err)
	}
}
