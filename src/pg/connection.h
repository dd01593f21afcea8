// pg::Connection: the libpq adapter. The only code that sees libpq types.
//
// Every connection is set up the same way so that values cross over exactly
// in text form: DateStyle ISO, TimeZone UTC, IntervalStyle postgres,
// extra_float_digits 3 (shortest exact floats), bytea_output hex,
// client_encoding UTF8, standard_conforming_strings on.
//
// Errors come back as Status with a code chosen from the SQLSTATE (see
// ClassifySqlState): lost connections are kRetryable, a failed COMMIT whose
// outcome is unknown is kInDoubt, permissions and missing objects are kFatal,
// bad credentials or database names are kBadConfig. Messages are one line and
// never contain a password.
//
// Fault seam (tests): a FaultHook installed with SetFaultHook() is asked
// about every statement before it is sent, on every Connection of the
// process, and can make it fail before it reaches the server, or cut the
// connection before or after the server ran it (a COMMIT that committed, or
// not, while the caller learns only "in doubt"). The faults are real: the
// socket is shut, the server sees the client go, libpq reports the
// connection lost, and the caller's recovery runs as it would in production.
// With no hook installed (the default) the cost is one atomic load per
// statement. See FaultHook below for the contract.
//
// Thread-safety: a Connection is used by one thread at a time.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/change.h"
#include "core/status.h"

struct pg_conn;
struct pg_result;

namespace datatunnel::pg {

struct ConnectOptions {
  std::string dsn;       // URI or key=value; may name host, port, user, sslmode, ...
  std::string password;  // empty: from the DSN, PGPASSWORD or ~/.pgpass as libpq does
  std::string role;      // "source" or "target": used in messages
  std::string application_name = "datatunnel";
  // When set, the session's synchronous_commit ("off", "local", "on", ...).
  // "off" only for sessions whose last commits may be lost in a crash of
  // their server: what they wrote is written again from elsewhere
  // (config.h, DatabaseConfig::synchronous_commit).
  std::string synchronous_commit;
};

// "127.0.0.1:5433/db1 as postgres": the DSN without its password, for messages.
std::string DescribeDsn(const std::string& dsn);

// Decides what a SQLSTATE means for us, from a table of whole codes and of
// classes (first two characters); a code not in it is kFatal: stopping loudly
// beats retrying blindly. "" (no SQLSTATE: libpq failed before the server
// answered) is kRetryable. Pinned, code by code, by tests/unit/classify_test.
StatusCode ClassifySqlState(std::string_view sqlstate);

// What an installed FaultHook does to a statement.
enum class Fault {
  kNone,
  // The statement is not sent; the call returns kRetryable ("injected
  // fault"). The connection stays usable (and any open transaction open).
  kFail,
  // The connection is cut before the statement is sent: the server never
  // sees it and rolls back any open transaction. COMMIT (alone, or as the
  // last statement of a pipeline) returns kInDoubt, anything else
  // kRetryable with the connection broken (IsBroken()).
  kLoseBefore,
  // The statement runs on the server to completion (a COMMIT commits), then
  // the connection is cut before the caller sees the result: COMMIT returns
  // kInDoubt, anything else kRetryable with the connection broken.
  kLoseAfter,
};

// What a FaultHook is told about a statement.
struct StatementInfo {
  std::string_view role;              // ConnectOptions::role: "source", "target", ...
  std::string_view application_name;  // ConnectOptions::application_name
  std::string_view sql;               // the statement's text
};

// The fault seam, as leveldb's Env is for files: tests install one to make a
// chosen statement fail deterministically. Exec, Query, ExecPipeline, Commit
// and CopyIn consult it (and so Listen and Open's session setup, which use
// Exec); CopyOut and WaitForNotifications do not. In a pipeline it is asked
// about each statement in order and the first answer other than kNone
// applies to the whole pipeline (kLoseAfter: after all of it ran). Match
// statements by role and text (a tag in a comment of the SQL works too).
//
// Thread-safety: OnStatement is called on whatever thread uses a Connection,
// so concurrently from several; it must be thread-safe and must not use a
// pg::Connection itself.
class FaultHook {
 public:
  virtual ~FaultHook() = default;
  virtual Fault OnStatement(const StatementInfo& statement) = 0;
};

// Installs `hook` for every Connection of the process; nullptr removes it.
// Not owned: it must outlive every statement run while it is installed.
// For tests only.
void SetFaultHook(FaultHook* hook);

class QueryResult {
 public:
  QueryResult() = default;
  explicit QueryResult(pg_result* res);
  int rows() const;
  int columns() const;
  bool IsNull(int row, int col) const;
  std::string_view Get(int row, int col) const;
  // REQUIRES: the value is a decimal integer.
  int64_t GetInt64(int row, int col) const;
  bool GetBool(int row, int col) const { return Get(row, col) == "t"; }
  // Columns [first_col, first_col + n) of `row` as a Row of n slots, its
  // value buffer allocated once.
  void ReadRow(int row, int first_col, size_t n, Row* out) const;
  std::string ColumnName(int col) const;
  // Number of rows affected by an INSERT/UPDATE/DELETE.
  int64_t AffectedRows() const;

 private:
  struct Deleter {
    void operator()(pg_result* r) const;
  };
  std::unique_ptr<pg_result, Deleter> res_;
};

// A bound parameter in text form; nullopt is SQL NULL.
using Param = std::optional<std::string_view>;

// One statement of a pipeline; params point into memory the caller keeps alive.
struct Statement {
  std::string sql;
  std::vector<Param> params;
  // Run as a named statement the connection prepares the first time it
  // sees this text (in the same pipeline) and keeps for the session: the
  // parse and analysis are then done once, not per run. For statements of
  // few shapes run again and again (the apply of a tick touching hundreds
  // of tables sends one such per table). Ignored once the connection holds
  // Connection::kMaxPrepared statements.
  bool prepare = false;
};

// Owns the text of parameters while a pipeline is built and sent: a Param
// only points at its text, and Keep()'s result stays valid as more is kept.
class Arena {
 public:
  std::string_view Keep(std::string s) { return store_.emplace_back(std::move(s)); }

 private:
  std::deque<std::string> store_;
};

class Connection {
 public:
  // Connects and applies the session settings above.
  static Result<std::unique_ptr<Connection>> Open(const ConnectOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one or more statements (simple protocol), discarding results.
  Status Exec(std::string_view sql);
  // Runs one statement with text parameters ($1, $2, ...).
  Result<QueryResult> Query(std::string_view sql, std::span<const Param> params = {});
  Result<QueryResult> Query(std::string_view sql, std::initializer_list<Param> params) {
    return Query(sql, std::span<const Param>(params.begin(), params.size()));
  }
  // Sends all statements at once (libpq pipeline mode) and reads their results:
  // one round trip. Returns the first error; the statements after a failed one
  // are skipped by the server. A lost connection when the last statement is
  // COMMIT is kInDoubt. With `results`, it gets each statement's result
  // (rows of a SELECT or RETURNING), one per statement, in order.
  Status ExecPipeline(std::span<const Statement> statements,
                      std::vector<QueryResult>* results = nullptr);
  // Named statements kept per connection (Statement::prepare), at most.
  static constexpr size_t kMaxPrepared = 4096;
  // How many statements Statement::prepare has prepared on this connection.
  size_t prepared_count() const { return prepared_.size(); }
  // SQLSTATE of the last failed statement ("" when none or unknown).
  const std::string& last_sqlstate() const { return last_sqlstate_; }
  // After ExecPipeline failed: the index of the first statement that failed
  // (SIZE_MAX when none did, e.g. a lost connection).
  size_t last_failed_statement() const { return last_failed_statement_; }
  // COMMIT, mapping a lost connection to kInDoubt.
  Status Commit();
  // Rolls back if a transaction is open; never fails (a broken connection has
  // no transaction left).
  void RollbackQuietly();

  // Sends one statement with text parameters and returns without waiting
  // for it: the server runs it while the caller works on (the consumer
  // decodes the next piece of a streamed tick while the target updates the
  // last one). Its result is read by TakeSent(). Every other call that
  // talks to the server first waits for that result and keeps it for
  // TakeSent(); if the sent statement failed, that call returns its error
  // without running its own statement. At most one statement is sent at a
  // time: Send() again only after TakeSent().
  Status Send(std::string_view sql, std::span<const Param> params = {});
  // The result of the statement Send() sent (waiting for it if it is still
  // running), or its error.
  Result<QueryResult> TakeSent();

  // COPY ... FROM STDIN, sending `data` (already in COPY text format).
  Status CopyIn(std::string_view copy_sql, std::string_view data);
  // The same, sending `pieces` in turn as one COPY's data (each ends at a
  // line's end): several messages' rows in one statement, not copied
  // together first.
  Status CopyIn(std::string_view copy_sql, std::span<const std::string_view> pieces);
  // COPY ... TO STDOUT; calls on_row with each line (without its newline).
  Status CopyOut(std::string_view copy_sql, const std::function<Status(std::string_view)>& on_row);

  Status Listen(std::string_view channel);
  // Waits until a notification arrives, `wake_fd` (if >= 0) becomes readable,
  // or timeout_ms passes. Returns how many notifications were drained.
  Result<int> WaitForNotifications(int timeout_ms, int wake_fd);

  // True when the server connection is gone; the Connection must be replaced.
  bool IsBroken() const;
  // In a transaction block (or a failed one).
  bool InTransaction() const;
  int server_version() const;
  // Process id of the backend, for pg_terminate_backend in tests.
  int backend_pid() const;
  const std::string& description() const { return description_; }
  // The database name this connection is on (libpq's PQdb).
  std::string database() const;

  // Status for the current connection-level error (after a failed call).
  Status ConnectionError(std::string_view what) const;
  // Status for a failed result.
  Status ResultError(const pg_result* res, std::string_view what) const;

 private:
  Connection(pg_conn* conn, std::string description, std::string role,
             std::string application_name);
  // The installed FaultHook's answer for `sql` (kNone without a hook).
  Fault InjectedFault(std::string_view sql) const;
  // Cuts the connection (shuts the socket); libpq then reports it lost.
  void Cut();
  Status InjectedError(Fault fault, std::string_view what, bool commit);
  // Waits for the result of a statement Send() sent, if one is running,
  // and keeps it (sent_result_, sent_status_); returns its error.
  Status Settle();
  pg_conn* conn_;
  bool in_flight_ = false;  // Send()'s statement runs; its result is unread
  QueryResult sent_result_;
  Status sent_status_;
  std::string description_;
  std::string role_;
  std::string application_name_;
  mutable std::string last_sqlstate_;
  size_t last_failed_statement_ = SIZE_MAX;
  // Statement::prepare: the text of each statement prepared on this
  // session, and its name.
  std::unordered_map<std::string, std::string> prepared_;
};

// Opens a connection, retrying retryable failures until `deadline_ms` passes
// or `should_stop` returns true.
Result<std::unique_ptr<Connection>> OpenWithRetry(const ConnectOptions& options, int deadline_ms,
                                                  const std::function<bool()>& should_stop);

// A text[] literal ('{"a","b",NULL}') for binding as a parameter.
std::string TextArrayLiteral(const std::vector<std::optional<std::string>>& items);

// Appends `value` to `out` escaped for COPY text format.
void AppendCopyEscaped(std::string_view value, std::string* out);
// Splits one COPY text line into fields, unescaping; nullopt for \N.
// Returns false when the line is malformed.
bool SplitCopyLine(std::string_view line, std::vector<std::optional<std::string>>* fields);

}  // namespace datatunnel::pg
