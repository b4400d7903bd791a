package app

import (
	"log/slog"

	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/xds"
)

// fdReserve is how many descriptors the xDS port leaves to the rest of
// meshca: the admin listeners and their clients, the store, log files.
const fdReserve = 256

// xdsLimits raises the descriptor limit, reports it, and fits the xDS
// connection limit under it.
func xdsLimits(c config.XDS, logger *slog.Logger) xds.Limits {
	soft, hard, err := raiseFileLimit()
	if err != nil {
		logger.Warn("descriptor limit not raised", "err", err)
	}
	n := connectionBudget(c.MaxConnections, soft)
	logger.Info("descriptor limit", "soft", soft, "hard", hard, "xds_max_connections", n)
	if n < c.MaxConnections {
		logger.Warn("xds.max_connections lowered to fit the descriptor limit; raise the limit (ulimit -n, LimitNOFILE=) to allow more",
			"configured", c.MaxConnections, "in_force", n, "descriptor_limit", soft)
	}
	return xds.Limits{
		MaxConnections: n, MaxUnauthenticated: c.MaxUnauthenticatedConnections,
		MaxUnauthenticatedPerAddress: c.MaxUnauthenticatedPerAddress, IdleTimeout: c.IdleTimeout.D(),
	}
}

// connectionBudget is the xDS connection limit that leaves fdReserve
// descriptors (under a small limit, half of it) for the rest; fdLimit 0
// means unknown.
func connectionBudget(configured int, fdLimit uint64) int {
	if fdLimit == 0 || fdLimit > 1<<30 {
		return configured
	}
	avail := max(int(fdLimit)-fdReserve, int(fdLimit)/2)
	return max(1, min(configured, avail))
}
