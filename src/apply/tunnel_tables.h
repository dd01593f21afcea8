// Apply, control plane: the source tables a tunnel carries, as `init`
// recorded them on the target (datatunnel.tunnel_tables).
//
// A [[tables]] entry may select tables by pattern (`source = "public.*"`).
// Commands that reach the source match the pattern against the tables init
// captured there (capture::CapturedTables); `consume` may have no access to
// the source, so init also records the list here, and a consumer matches
// its patterns against it. Each init replaces the tunnel's list.
//
// Thread-safety: free functions on the caller's connection.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::apply {

// Replaces the list of source tables of tunnel `tunnel` (creating the
// table when missing), in one transaction. Returns whether it changed.
Result<bool> RecordTunnelTables(pg::Connection& target, const std::string& tunnel,
                                const std::vector<QualifiedName>& sources);

// The list init recorded for `tunnel`. kBadConfig asking for `init` when
// there is none (an earlier version's init, or none at all).
Result<std::vector<QualifiedName>> LoadTunnelTables(pg::Connection& target,
                                                    const std::string& tunnel);

}  // namespace datatunnel::apply
