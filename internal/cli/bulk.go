package cli

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

// parseIdentityLine reads "NAME [dns=H,H] [ttl=D] [admin]".
func parseIdentityLine(line string) (api.AddIdentityRequest, error) {
	fields := strings.Fields(line)
	req := api.AddIdentityRequest{Name: fields[0]}
	for _, f := range fields[1:] {
		switch k, v, _ := strings.Cut(f, "="); k {
		case "dns":
			req.DNSNames = strings.Split(v, ",")
		case "ttl":
			if _, err := time.ParseDuration(v); err != nil {
				return req, fmt.Errorf("ttl %q is not a duration", v)
			}
			req.TTL = v
		case "admin":
			// "admin" alone, or admin=true/false: anything else is a mistake
			// that must not grant admin access.
			if _, v, has := strings.Cut(f, "="); has {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return req, fmt.Errorf("admin=%q: use admin, admin=true or admin=false", v)
				}
				req.Admin = b
			} else {
				req.Admin = true
			}
		default:
			return req, fmt.Errorf("unknown field %q (use dns=, ttl= or admin)", f)
		}
	}
	return req, nil
}

func addFromFile(cmd *cobra.Command, g *globals, path string) error {
	var data []byte
	var err error
	if path == "-" {
		data, err = readAllLimited(cmd.InOrStdin())
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return fmt.Errorf("read --from: %w", err)
	}
	type job struct {
		line int
		req  api.AddIdentityRequest
	}
	var jobs []job
	var failed []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, "#"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		req, err := parseIdentityLine(line)
		if err != nil {
			failed = append(failed, fmt.Sprintf("line %d: %v", n, err))
			continue
		}
		jobs = append(jobs, job{line: n, req: req})
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read --from: %w (lines are limited to 64 KiB); nothing was added", err)
	}
	lines, unparsed := len(jobs)+len(failed), len(failed)
	c, err := g.client()
	if err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	start, lastReport := time.Now(), time.Now()
	added := 0
	for i, j := range jobs {
		var id api.Identity
		if err := c.do(cmd.Context(), "POST", api.PathIdentities, j.req, &id); err != nil {
			if cmd.Context().Err() != nil {
				return err
			}
			failed = append(failed, fmt.Sprintf("line %d (%s): %v", j.line, j.req.Name, err))
		} else {
			added++
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\n", id.Name, id.Cert.Serial, id.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		if time.Since(lastReport) >= time.Second || i == len(jobs)-1 {
			lastReport = time.Now()
			rate := float64(i+1) / time.Since(start).Seconds()
			fmt.Fprintf(stderr, "meshca: %d/%d done, %d failed, %.0f/s\n", unparsed+i+1, lines, len(failed), rate)
		}
	}
	for _, f := range failed {
		fmt.Fprintln(stderr, "meshca: "+f)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d lines failed; %d identities added", len(failed), lines, added)
	}
	return nil
}
