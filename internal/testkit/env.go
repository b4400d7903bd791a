package testkit

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/config"
)

// LoopbackConfig is meshca's default configuration on dataDir with the
// admin API and the xDS server on free loopback ports; the xDS server
// certificate names localhost, which grpc-go checks.
func LoopbackConfig(dataDir string) config.Config {
	cfg := config.Default()
	cfg.DataDir = dataDir
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.XDS.Listen = "127.0.0.1:0"
	cfg.XDS.DNSNames = []string{"localhost"}
	return cfg
}

// FreePort returns a loopback port that was free a moment ago. Another
// process may take it before the caller binds it: use it only where the
// address must be known before the listener exists.
func FreePort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// Logger is a logger at level info whose lines go to tb's log.
func Logger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(LogWriter{TB: tb}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// LogWriter writes each line it is given to TB's log.
type LogWriter struct{ TB testing.TB }

func (w LogWriter) Write(p []byte) (int, error) {
	w.TB.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = LogWriter{}

// Rand is the random source of a randomised test, seeded with MESHCA_SEED
// when set, otherwise with the time. The seed is logged so that a failure
// can be replayed.
func Rand(tb testing.TB) *rand.Rand {
	tb.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MESHCA_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			tb.Fatalf("MESHCA_SEED=%q: %v", s, err)
		}
		seed = v
	}
	tb.Logf("seed %d (replay with MESHCA_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// Soak tells whether the long variant of the soak and hardening tests was
// asked for (MESHCA_SOAK=1).
func Soak() bool { return os.Getenv("MESHCA_SOAK") == "1" }

// BuildMeshca builds cmd/meshca into dir and returns the binary's path. It
// takes no testing.TB so that a TestMain can build once for all tests.
func BuildMeshca(dir string) (string, error) {
	bin := filepath.Join(dir, "meshca")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/meshca/meshca/cmd/meshca").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build meshca: %w\n%s", err, out)
	}
	return bin, nil
}
