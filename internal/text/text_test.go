package text_test

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/meshca/meshca/internal/text"
)

func TestEscape(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "node-1.example", "node-1.example"},
		{"letters", "café ünïcode 日本", "café ünïcode 日本"},
		{"clear screen", "\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
		{"newline and tab", "a\nb\tc\r", `a\nb\tc\r`},
		{"bell and DEL", "\a\x7f", `\x07\x7f`},
		{"C1 CSI", "\u009b31m", `\u009b31m`},
		{"bidi override", "abc\u202edef\u2066", `abc\u202edef\u2066`},
		{"invalid UTF-8", "a\xffb\xc3", `a\xffb\xc3`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := text.Escape(tt.in); got != tt.want {
				t.Fatalf("Escape(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestClip(t *testing.T) {
	tests := []struct {
		name, in string
		n        int
		want     string
	}{
		{"short", "abc", 5, "abc"},
		{"exact", "abcde", 5, "abcde"},
		{"ascii", "abcdef", 3, "abc..."},
		{"inside a rune", "aé", 2, "a..."},   // é is 2 bytes: not cut in half
		{"inside 3 bytes", "a日b", 3, "a..."}, // 日 is 3 bytes
		{"after a rune", "a日b", 4, "a日..."},
		{"invalid", "\xff\xff\xff\xff", 2, "?..."},
		{"invalid, short", "a\xffb\xc3", 10, "a?b?"},
		{"invalid then cut", "a\xff\xfeb日本", 6, "a?b..."},
		{"truncated rune at the cut", "ab\xe6\x97", 3, "ab..."},
		{"negative n", "abc", -1, "..."},
		{"empty", "", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := text.Clip(tt.in, tt.n)
			if got != tt.want {
				t.Fatalf("Clip(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("Clip(%q, %d) = %q is not UTF-8", tt.in, tt.n, got)
			}
			if len(got) > max(tt.n, 0)+len(text.Ellipsis) {
				t.Fatalf("Clip(%q, %d) = %q is longer than %d bytes and the ellipsis", tt.in, tt.n, got, tt.n)
			}
		})
	}
}

// The Writer keeps newlines and tabs (layout) and a UTF-8 character split
// across writes, and escapes everything else Escape does.
func TestWriter(t *testing.T) {
	var b bytes.Buffer
	w := text.NewWriter(&b)
	in := "col\tcol\n\x1b[2Jé日\u009b\n"
	for i := 0; i < len(in); i++ { // one byte per Write: every rune is split
		if n, err := w.Write([]byte{in[i]}); n != 1 || err != nil {
			t.Fatalf("Write: %d %v", n, err)
		}
	}
	w.Write([]byte("\xe6")) // a truncated rune at the end
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := "col\tcol\n\\x1b[2Jé日\\u009b\n\\xe6"; b.String() != want {
		t.Fatalf("wrote %q, want %q", b.String(), want)
	}
	if strings.ContainsRune(b.String(), 0x1b) {
		t.Fatal("ESC passed")
	}
}
