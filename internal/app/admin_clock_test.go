package app_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// TestAdminCertificateJudgedByMeshcaClock presents an admin credential to
// the mTLS admin listener while it is valid, and again once meshca's clock
// has passed its NotAfter: the second handshake is refused. meshca judges
// every certificate by its own clock, the admin listener included.
func TestAdminCertificateJudgedByMeshcaClock(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshMTLS(t, clk, &lineLog{})
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "ops", Admin: true, TTL: "1h"}, nil, http.StatusCreated)
	cert := m.issueCert("ops")

	get := func() error {
		c := mtlsClient(cert)
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + m.app.AdminMTLS + api.PathIdentities)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatalf("a valid admin credential was refused: %v", err)
	}
	clk.Set(cert.Leaf.NotAfter.Add(time.Minute))
	if err := get(); err == nil {
		t.Fatal("an admin credential past its NotAfter on meshca's clock was accepted")
	}
}
