package bootstrap

import (
	"strconv"
	"strings"
)

// AdminPort reads Envoy's admin port from envoy.yaml as the function Envoy
// renders it (the port_value inside the top-level admin block; flow or
// block style, so a hand-edited file reads too), without a YAML parser: it
// is for a node directory written before the node file recorded the port,
// on a node whose binary links no YAML library. ok is false when the file
// has no admin block with a port in 1-65535.
func AdminPort(envoyYAML []byte) (port uint32, ok bool) {
	inAdmin := false
	for line := range strings.Lines(string(envoyYAML)) {
		line = strings.TrimRight(line, "\r\n")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			// A top-level key: the admin block, if it was open, ended
			// without a port.
			if inAdmin {
				return 0, false
			}
			rest, isAdmin := strings.CutPrefix(line, "admin:")
			if !isAdmin {
				continue
			}
			inAdmin = true
			line = rest
		}
		if !inAdmin {
			continue
		}
		_, rest, found := strings.Cut(line, "port_value:")
		if !found {
			continue
		}
		rest = strings.TrimSpace(rest)
		digits := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if digits == -1 {
			digits = len(rest)
		}
		p, err := strconv.ParseUint(rest[:digits], 10, 16)
		if err != nil || p == 0 {
			return 0, false
		}
		return uint32(p), true
	}
	return 0, false
}
