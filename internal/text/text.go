// Package text makes text that came from outside meshca (node names in
// refused requests, proxies' NACK messages and access logs, audit details)
// safe to store and to print: Clip shortens it on a UTF-8 boundary and
// keeps it valid UTF-8, Escape
// and Writer show control characters as escapes instead of letting a
// terminal act on them.
package text

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Ellipsis marks clipped text.
const Ellipsis = "..."

// Clip returns s cut to at most n bytes, never inside a UTF-8 sequence,
// followed by Ellipsis when anything was cut. The result is always valid
// UTF-8 (protobuf strings and JSON must be): each run of bytes that are
// not UTF-8 becomes "?", which never makes the text longer.
func Clip(s string, n int) string {
	if n < 0 {
		n = 0
	}
	if len(s) <= n {
		return strings.ToValidUTF8(s, "?")
	}
	cut := n
	// Step back to the start of a rune: at most utf8.UTFMax-1 bytes.
	for cut > 0 && cut > n-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	if !utf8.RuneStart(s[cut]) { // invalid UTF-8: cut at n anyway
		cut = n
	}
	return strings.ToValidUTF8(s[:cut], "?") + Ellipsis
}

// Escape returns s with every character a terminal could act on written
// as a Go-style escape: C0 controls (newline and tab included), DEL, C1
// controls, Unicode bidirectional overrides and isolates (which reorder
// what the reader sees), and bytes that are not UTF-8. Printable text,
// non-ASCII letters included, is unchanged.
func Escape(s string) string {
	if safe(s, false) {
		return s
	}
	var b strings.Builder
	escapeTo(&b, s, false)
	return b.String()
}

// escapeTo writes s to b, escaped as Escape does; with keepLines, newline
// and tab pass unchanged (for whole output, where they are layout).
func escapeTo(b *strings.Builder, s string, keepLines bool) {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(b, `\x%02x`, s[i])
		case keepLines && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
}

func safe(s string, keepLines bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c < 0x7f || keepLines && (c == '\n' || c == '\t') {
			continue
		}
		if c < 0x80 {
			return false
		}
		// Non-ASCII: decide rune by rune.
		for _, r := range s[i:] {
			if r == utf8.RuneError || r < 0x20 && !(keepLines && (r == '\n' || r == '\t')) || r == 0x7f || unsafeRune(r) {
				return false
			}
		}
		return utf8.ValidString(s[i:])
	}
	return true
}

// unsafeRune reports C1 controls (0x9b is CSI on many terminals) and the
// bidirectional formatting characters.
func unsafeRune(r rune) bool {
	return r >= 0x80 && r <= 0x9f ||
		r >= 0x202a && r <= 0x202e || // LRE, RLE, PDF, LRO, RLO
		r >= 0x2066 && r <= 0x2069 || // LRI, RLI, FSI, PDI
		r == 0x200e || r == 0x200f || r == 0x061c // LRM, RLM, ALM
}

// Writer escapes everything written through it as Escape does, except
// newlines and tabs, which pass as layout. It is the last guard of text
// output: a field printed without Escape still cannot move the cursor,
// clear the screen or hide text. Writes may split a UTF-8 sequence; the
// tail is held until the next Write or Flush.
type Writer struct {
	w       io.Writer
	pending []byte // an incomplete UTF-8 sequence from the previous Write
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write escapes p and writes it. It reports len(p) on success.
func (w *Writer) Write(p []byte) (int, error) {
	data := p
	if len(w.pending) > 0 {
		data = append(w.pending, p...)
		w.pending = nil
	}
	// Hold back a trailing sequence that is only incomplete so far.
	keep := 0
	for k := 1; k < utf8.UTFMax && k <= len(data); k++ {
		c := data[len(data)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(data[len(data)-k:]) {
				keep = k
			}
			break
		}
	}
	body := data[:len(data)-keep]
	if keep > 0 {
		w.pending = append([]byte(nil), data[len(data)-keep:]...)
	}
	s := string(body)
	if !safe(s, true) {
		var b strings.Builder
		escapeTo(&b, s, true)
		s = b.String()
	}
	if _, err := io.WriteString(w.w, s); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes a held incomplete sequence, escaped as bytes that are not
// UTF-8.
func (w *Writer) Flush() error {
	if len(w.pending) == 0 {
		return nil
	}
	var b strings.Builder
	escapeTo(&b, string(w.pending), true)
	w.pending = nil
	_, err := io.WriteString(w.w, b.String())
	return err
}
