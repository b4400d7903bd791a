package nodecmd

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/nodeapi"
)

// TestGRPCBootstrapLastWriteIsLatest: a renewal that learns new replicas
// and an identity change rewrite grpc-bootstrap.json at the same time,
// round after round. After both, the file must be the bootstrap of the
// latest state: every identity whose files exist and the latest replica
// list. A renewal that rendered the file before the identity arrived and
// wrote it after the identity's rewrite would leave the identity out
// until the next change.
func TestGRPCBootstrapLastWriteIsLatest(t *testing.T) {
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	nf := nodeapi.NodeFile{Server: "127.0.0.1:6565", Servers: []string{"127.0.0.1:6565"}, Node: "api-1", Kind: nodeapi.KindGRPC,
		TrustDomain: "mesh.local", AgentFiles: files}
	data, err := json.Marshal(nf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, NodeFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	gb := &grpcBootstrap{dir: dir, log: slog.New(slog.DiscardHandler)}
	if err := gb.write(); err != nil {
		t.Fatal(err)
	}
	const rounds = 40
	stale := 0
	for k := range rounds {
		identity := fmt.Sprintf("api-%d", k)
		replica := fmt.Sprintf("127.0.0.2:%d", 7000+k)
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		wg.Add(2)
		go func() { // the agent: files first, then the bootstrap
			defer wg.Done()
			if err := agentfiles.Write(files, identity, []byte("chain"), []byte("key"), []byte("bundle")); err != nil {
				errs <- err
				return
			}
			errs <- gb.write()
		}()
		go func() { // a renewal whose answer names a new replica
			defer wg.Done()
			cur, err := readNodeFile(dir)
			if err != nil {
				errs <- err
				return
			}
			errs <- refreshServers(dir, cur, []string{replica}, io.Discard, gb, nil)
		}()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", k, err)
			}
		}
		got, err := os.ReadFile(filepath.Join(dir, bootstrap.GRPCFile))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(got), `"`+agentfiles.Instance(identity)+`"`) || !strings.Contains(string(got), replica) {
			stale++
			t.Errorf("round %d: grpc-bootstrap.json lacks identity %s or replica %s", k, identity, replica)
		}
	}
	t.Logf("%d rounds of a renewal with new replicas racing an identity change: %d left a stale grpc-bootstrap.json", rounds, stale)
}
