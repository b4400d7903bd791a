package ca_test

import (
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

func TestReasonCode(t *testing.T) {
	for _, tt := range []struct {
		text string
		want int
	}{
		{"key compromise: laptop lost", 1},
		{"keyCompromise", 1},
		{"Key-Compromise", 1},
		{"ca_compromise", 2},
		{"affiliation changed", 3},
		{"superseded by web-2", 4},
		{"cessation of operation", 5},
		{"privilege withdrawn", 9},
		{"", 0},
		{"laptop lost", 0},
		{"keycompromised", 0}, // not the word
		{"certificate hold", 0},
	} {
		if got := ca.ReasonCode(tt.text); got != tt.want {
			t.Errorf("ReasonCode(%q) = %d, want %d", tt.text, got, tt.want)
		}
	}
}

// A CRL entry carries its reason code; unspecified leaves it out.
func TestCRLReasonCode(t *testing.T) {
	c, m := newCA(t, ca.ECDSAP256, clock.NewFake(testNow))
	_ = c
	p, err := ca.SignCRL(m.Issuer, m.IssuerKey, []ca.Revoked{
		{Serial: "1a", RevokedAt: testNow, ReasonCode: 1},
		{Serial: "2b", RevokedAt: testNow},
	}, big.NewInt(1), testNow, testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(p)
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, e := range crl.RevokedCertificateEntries {
		got[e.SerialNumber.Text(16)] = e.ReasonCode
	}
	if got["1a"] != 1 || got["2b"] != 0 || len(got) != 2 {
		t.Fatalf("reason codes by serial: %v", got)
	}
}
