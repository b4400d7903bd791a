package attest_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/workload/attest"
)

// TestGateInterceptorsOnASocket: on a Unix socket served with peercred,
// the interceptors let a request through; served without (a server built
// with the wrong credentials), they refuse every request, unary and
// stream, with Unauthenticated, before any handler runs.
func TestGateInterceptorsOnASocket(t *testing.T) {
	for _, tt := range []struct {
		name  string
		creds credentials.TransportCredentials
		want  codes.Code
	}{
		{"peercred", peercred.New(), codes.OK},
		{"no peer credentials", insecure.NewCredentials(), codes.Unauthenticated},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := attest.NewGate(attest.GateConfig{})
			path := filepath.Join(t.TempDir(), "g.sock")
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer(grpc.Creds(tt.creds), grpc.ChainUnaryInterceptor(g.UnaryInterceptor()), grpc.ChainStreamInterceptor(g.StreamInterceptor()))
			healthpb.RegisterHealthServer(srv, health.NewServer())
			go srv.Serve(l)
			defer srv.Stop()
			cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			hc := healthpb.NewHealthClient(cc)
			if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != tt.want {
				t.Fatalf("unary: err = %v, want %v", err, tt.want)
			}
			w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				_, err = w.Recv()
			}
			if status.Code(err) != tt.want {
				t.Fatalf("stream: err = %v, want %v", err, tt.want)
			}
		})
	}
}
