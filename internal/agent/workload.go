package agent

import (
	"context"
	"encoding/pem"
	"fmt"

	"github.com/meshca/meshca/internal/workload"
)

// workloadSource hands the agent's state to the Workload API server.
type workloadSource struct{ a *Agent }

var _ workload.Source = workloadSource{}

// Current converts the agent's state: each SVID's DER chain, key and
// selectors, the roots parsed, the CRLs as DER. Its channel is closed once
// a change has settled: a burst of renewals is sent to the Workload API's
// clients as a few states, not one per certificate.
func (w workloadSource) Current() (workload.State, <-chan struct{}) {
	st, changed := w.a.settledState()
	out := workload.State{TrustDomain: st.TrustDomain}
	for _, v := range st.SVIDs {
		chain := make([][]byte, 0, len(v.Chain))
		for _, c := range v.Chain {
			chain = append(chain, c.Raw)
		}
		out.SVIDs = append(out.SVIDs, workload.SVID{SPIFFEID: v.ID.String(), CertChain: chain, Key: v.Key, Selectors: v.Selectors})
	}
	// Both were checked when they arrived (trustOf).
	out.Bundle, _ = parseCerts(st.BundlePEM)
	for b, rest := pem.Decode(st.CRLPEM); b != nil; b, rest = pem.Decode(rest) {
		out.CRLs = append(out.CRLs, b.Bytes)
	}
	return out, changed
}

// serveWorkload serves the SPIFFE Workload API on path until ctx ends. The
// socket is open to every local user (0666) in a directory only this user
// may write to: which caller gets which SVID is decided by its peer
// credentials against the selectors meshca assigned.
func (a *Agent) serveWorkload(ctx context.Context, path string) error {
	lis, err := listenUnix(path, 0o666)
	if err != nil {
		return err
	}
	srv, err := workload.New(workload.Config{Source: workloadSource{a}, Logger: a.log})
	if err != nil {
		lis.Close()
		return err
	}
	if err := srv.Serve(ctx, lis); err != nil {
		return fmt.Errorf("workload api socket: %w", err)
	}
	return nil
}
