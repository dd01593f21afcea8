// auto_add at run time: notices tables the source's event trigger added to
// the tunnel (capture/install.sql, datatunnel.on_create()) and makes the
// target ready for them, so `run`, `produce` and `consume` restart their
// pipeline with the new tables instead of needing a restart by hand.
//
// The trigger sends NOTIFY datatunnel when it registers a table. A
// TableWatch holds a source connection of its own that LISTENs on that
// channel and is otherwise idle: an idle tunnel costs the source nothing
// more. Only on a notification (and after a reconnect) does it read the
// tunnel's captured tables (one query) and match the configuration's
// patterns against them (ResolveTables). `consume` needs this connection
// to the source as well: the schema marker carries no key and no type
// definitions, so the target table is created from the source's catalog,
// as `init` does.
//
// Thread-safety: none; the main thread's.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "cli/common.h"
#include "pg/connection.h"

namespace datatunnel::cli {

class TableWatch {
 public:
  // Connects and LISTENs. `setup.config`: the configuration with its
  // pattern entries (before ResolveTables).
  static Result<std::unique_ptr<TableWatch>> Open(const Setup& setup);

  // Whether the tunnel's tables differ from `current` (resolved tables, as
  // the pipeline runs them): checked only after a notification or a
  // reconnect, so most calls cost no query. Connection trouble reads as
  // "no change" (and is retried every few seconds).
  bool Changed(const std::vector<TableConfig>& current);

  // The tables the configuration selects now, in *tables (ResolveTables
  // over the tables captured on the source).
  Status Resolve(std::vector<TableConfig>* tables);

  // Makes the target ready for the tables of `now` that `before` lacks, as
  // `init` does (the table, its key index, the truncate trigger, user
  // types; the tunnel's table list for consumers without the source).
  // Logs one line per table.
  Status PrepareTarget(pg::Connection& target, const std::vector<TableConfig>& before,
                       const std::vector<TableConfig>& now);

  pg::Connection& source() { return *conn_; }

 private:
  explicit TableWatch(Setup setup) : setup_(std::move(setup)) {}
  Status Connect();

  const Setup setup_;  // with the pattern entries
  std::unique_ptr<pg::Connection> conn_;
  bool check_ = false;  // a notification (or a reconnect) came since the last check
  int64_t next_connect_us_ = 0;
};

}  // namespace datatunnel::cli
