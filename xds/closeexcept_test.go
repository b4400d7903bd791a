package xds

import (
	"slices"
	"testing"

	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestCloseNodeExcept: the connections a node made with certificates it
// replaced end, with their streams; the one made with the certificate it
// uses now stays, and so do other nodes'.
func TestCloseNodeExcept(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	oldCert, newCert := f.nodeCert("web"), f.nodeCert("web")
	old1, old2 := f.connect("web", oldCert), f.connect("web", oldCert)
	cur := f.connect("web", newCert)
	other := f.nodeConn("db")
	oldStream, curStream, dbStream := openADS(f, old1, "web"), openADS(f, cur, "web"), openADS(f, other, "db")

	if n := f.s.CloseNodeExcept("web", leafSerial(newCert)); n != 2 {
		t.Errorf("CloseNodeExcept closed %d connections, want 2", n)
	}
	if !old1.isClosed() || !old2.isClosed() {
		t.Fatal("a connection made with the replaced certificate stays open")
	}
	oldStream.wait() // returns once the stream on the closed connection ended
	if cur.isClosed() || curStream.ended() || other.isClosed() || dbStream.ended() {
		t.Fatal("a connection with the current certificate, or another node's, ended")
	}
	got, err := secretAskers[0].ask(f, cur, nodeID("web"), resource.SecretType, nil)
	if err != nil || !slices.Equal(got, []string{bundleName, secretOf("web")}) {
		t.Fatalf("the current connection is served %v, %v", got, err)
	}
	if n := f.s.CloseNodeExcept("web", leafSerial(newCert)); n != 0 {
		t.Errorf("a second call closed %d connections", n)
	}
	t.Logf("node with 3 connections, 2 on a replaced certificate: closed 2, kept 1 and the other node's")
}
