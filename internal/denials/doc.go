// Package denials audits refused and failed requests in aggregate. Anyone
// who can reach a port can cause refusals, so the first refusal of a
// source (actor, node, identity) for an action and reason is recorded at
// once, where an operator sees it, and its repeats are counted and written
// as one summary record per source and reason at the end of the interval
// ("41 more refusals between T1 and T2"). Exact counts go to
// Config.OnDenial (metrics) as they happen.
//
// One Recorder serves every part that refuses: the registry, the
// authority, the xDS server and the admin API. It writes to the store and
// imports nothing of meshca above it.
//
// # Caveats
//
// Repeats not yet summed up are held in memory: the summaries are written
// by Run every interval and once more when it ends; refusals recorded
// after that are written only by an explicit Flush. Each replica sums up
// its own refusals.
package denials
