package admin

import (
	"log"
	"log/slog"

	"github.com/meshca/meshca/internal/lograte"
)

// connErrorLog is the http.Server's ErrorLog: anyone who reaches the port
// can make it write (one "TLS handshake error" per malformed or refused
// connection), so at most lograte.DefaultBurst lines a minute pass; the
// next line says how many were left out.
func (s *Server) connErrorLog() *log.Logger {
	h := lograte.New(s.log.Handler(), lograte.Config{Now: s.cfg.Clock.Now})
	return slog.NewLogLogger(h, slog.LevelWarn)
}
