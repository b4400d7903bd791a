package admin_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLoopbackListenerRefusesBrowsers: a page in the operator's browser can
// neither drive the plain loopback API (no JSON content type without a CORS
// preflight) nor read it through DNS rebinding (Host is not loopback).
func TestLoopbackListenerRefusesBrowsers(t *testing.T) {
	srv := newAdmin(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln, nil) }()
	defer func() { cancel(); <-done }()
	base := "http://" + ln.Addr().String()
	do := func(method, path, host, ctype, body string) int {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if host != "" {
			req.Host = host
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tests := []struct {
		name                            string
		method, path, host, ctype, body string
		want                            int
	}{
		{"json POST from the CLI", "POST", "/v1/identities", "", "application/json", `{"name":"a"}`, http.StatusCreated},
		{"form POST", "POST", "/v1/identities", "", "application/x-www-form-urlencoded", `name=b`, http.StatusUnsupportedMediaType},
		{"text/plain POST", "POST", "/v1/identities", "", "text/plain", `{"name":"c"}`, http.StatusUnsupportedMediaType},
		{"rebound host", "GET", "/v1/identities", "attacker.example:8000", "", "", http.StatusForbidden},
		{"localhost is fine", "GET", "/v1/identities", "localhost:8000", "", "", http.StatusOK},
		{"ipv6 loopback is fine", "GET", "/v1/identities", "[::1]:8000", "", "", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := do(tt.method, tt.path, tt.host, tt.ctype, tt.body); got != tt.want {
				t.Fatalf("status %d, want %d", got, tt.want)
			}
		})
	}
}
