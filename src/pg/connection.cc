#include "pg/connection.h"

#include <fmt/format.h>
#include <libpq-fe.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <charconv>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/clock.h"

namespace datatunnel::pg {
namespace {

constexpr const char* kSessionSetup =
    "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres';"
    "SET extra_float_digits = 3; SET bytea_output = 'hex';"
    "SET standard_conforming_strings = on; SET client_min_messages = warning";

// libpq messages span lines ("...failed: Connection refused\n\tIs the server
// running..."); we print one line per error.
std::string OneLine(std::string_view msg) {
  std::string out;
  bool space = false;
  for (char c : msg) {
    if (c == '\n' || c == '\t' || c == '\r' || c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

std::atomic<FaultHook*> g_fault_hook{nullptr};

bool Contains(std::string_view hay, std::string_view needle) {
  return hay.find(needle) != std::string_view::npos;
}

void NoticeToLog(void* arg, const char* message) {
  spdlog::debug("{}: {}", static_cast<const char*>(arg), OneLine(message));
}

// Connection failures carry no SQLSTATE: classify by libpq's wording and add
// the fix an operator needs.
Status ConnectFailure(const std::string& role, const std::string& where, std::string_view raw) {
  std::string msg = OneLine(raw);
  // Drop libpq's "connection to server at "h" (addr), port p failed: " prefix;
  // `where` already says which server.
  if (auto p = msg.find("failed: "); p != std::string::npos && msg.rfind("connection to", 0) == 0) {
    msg = msg.substr(p + 8);
  }
  std::string head = fmt::format("cannot connect to the {} database ({})", role, where);
  std::string section = role == "source" ? "[source] dsn" : "[target] dsn";
  std::string pwfile = role == "source" ? "source.password_file" : "target.password_file";
  if (Contains(msg, "password authentication failed") || Contains(msg, "no password supplied") ||
      Contains(msg, "authentication failed")) {
    return Status::BadConfig(fmt::format(
        "{}: {}; fix the password (in the DSN, PGPASSWORD, ~/.pgpass or {})", head, msg, pwfile));
  }
  if (Contains(msg, "does not exist")) {
    return Status::BadConfig(
        fmt::format("{}: {}; create it or fix the name in {}", head, msg, section));
  }
  if (Contains(msg, "could not translate host name") ||
      Contains(msg, "invalid connection option") || Contains(msg, "missing \"=\"") ||
      Contains(msg, "invalid URI") || Contains(msg, "invalid integer value") ||
      Contains(msg, "invalid sslmode")) {
    return Status::BadConfig(fmt::format("{}: {}; fix {}", head, msg, section));
  }
  if (Contains(msg, "Connection refused")) {
    return Status::Retryable(fmt::format(
        "{}: connection refused; is PostgreSQL running there and accepting TCP connections? "
        "Check {}",
        head, section));
  }
  if (Contains(msg, "SSL") || Contains(msg, "certificate")) {
    return Status::BadConfig(
        fmt::format("{}: {}; check sslmode/sslrootcert in {}", head, msg, section));
  }
  return Status::Retryable(fmt::format("{}: {}", head, msg));
}

}  // namespace

std::string DescribeDsn(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (!opts) {
    if (err) PQfreemem(err);
    return "unparseable DSN";
  }
  std::string host, port, db, user;
  for (PQconninfoOption* o = opts; o->keyword; ++o) {
    if (!o->val || !*o->val) continue;
    std::string_view k = o->keyword;
    if (k == "host" || (k == "hostaddr" && host.empty())) host = o->val;
    if (k == "port") port = o->val;
    if (k == "dbname") db = o->val;
    if (k == "user") user = o->val;
  }
  PQconninfoFree(opts);
  if (host.empty()) host = "local socket";
  std::string out = host;
  if (!port.empty()) out += ":" + port;
  out += "/" + (db.empty() ? (user.empty() ? std::string("(default db)") : user) : db);
  if (!user.empty()) out += " as " + user;
  return out;
}

namespace {

// SQLSTATE → what to do next. A rule is a whole code (5 characters) or a
// class (its first 2); the first rule that matches wins, so codes come before
// their class. Anything not listed is kFatal.
struct SqlStateRule {
  std::string_view prefix;
  StatusCode kind;
};

constexpr SqlStateRule kSqlStateRules[] = {
    // Codes that heal by waiting, in classes that otherwise do not.
    {"57P01", StatusCode::kRetryable},  // admin_shutdown: the server restarts
    {"57P02", StatusCode::kRetryable},  // crash_shutdown
    {"57P03", StatusCode::kRetryable},  // cannot_connect_now: starting up or in recovery
    {"57P04", StatusCode::kRetryable},  // database_dropped: fails again on reconnect
    {"57P05", StatusCode::kRetryable},  // idle_session_timeout
    {"57014", StatusCode::kRetryable},  // query_canceled: statement_timeout, pg_cancel_backend
    {"55P03", StatusCode::kRetryable},  // lock_not_available: lock_timeout, NOWAIT
    {"55006", StatusCode::kRetryable},  // object_in_use
    {"3D000", StatusCode::kBadConfig},  // invalid_catalog_name: the DSN's database is missing
    // Whole classes.
    {"08", StatusCode::kRetryable},  // connection exception
    {"40", StatusCode::kRetryable},  // transaction rollback: serialization failure, deadlock
    {"53", StatusCode::kRetryable},  // insufficient resources: disk, memory, connections
    {"58", StatusCode::kRetryable},  // system error: I/O
    {"28", StatusCode::kBadConfig},  // invalid authorization specification
    {"22", StatusCode::kBadData},    // data exception: this row's values
    // 42 (syntax, permission, undefined object), 23 (constraint), 25, XX and
    // every class not listed cannot heal by retrying: kFatal.
};

}  // namespace

StatusCode ClassifySqlState(std::string_view s) {
  // No SQLSTATE: a client-side or connection failure.
  if (s.size() != 5) return StatusCode::kRetryable;
  for (const SqlStateRule& rule : kSqlStateRules) {
    if (s.substr(0, rule.prefix.size()) == rule.prefix) return rule.kind;
  }
  return StatusCode::kFatal;
}

void SetFaultHook(FaultHook* hook) { g_fault_hook.store(hook, std::memory_order_release); }

QueryResult::QueryResult(pg_result* res) : res_(res) {}
void QueryResult::Deleter::operator()(pg_result* r) const { PQclear(r); }
int QueryResult::rows() const { return res_ ? PQntuples(res_.get()) : 0; }
int QueryResult::columns() const { return res_ ? PQnfields(res_.get()) : 0; }
bool QueryResult::IsNull(int row, int col) const { return PQgetisnull(res_.get(), row, col); }
std::string_view QueryResult::Get(int row, int col) const {
  return {PQgetvalue(res_.get(), row, col), static_cast<size_t>(PQgetlength(res_.get(), row, col))};
}
int64_t QueryResult::GetInt64(int row, int col) const {
  std::string_view v = Get(row, col);
  int64_t out = 0;
  std::from_chars(v.data(), v.data() + v.size(), out);
  return out;
}
void QueryResult::ReadRow(int row, int first_col, size_t n, Row* out) const {
  out->Reset(n);
  size_t bytes = 0;
  for (size_t i = 0; i < n; ++i) bytes += Get(row, first_col + static_cast<int>(i)).size();
  out->Reserve(bytes);
  for (size_t i = 0; i < n; ++i) {
    const int col = first_col + static_cast<int>(i);
    if (!IsNull(row, col)) out->Set(i, Get(row, col));
  }
}
std::string QueryResult::ColumnName(int col) const { return PQfname(res_.get(), col); }
int64_t QueryResult::AffectedRows() const {
  const char* n = PQcmdTuples(res_.get());
  return (n && *n) ? std::strtoll(n, nullptr, 10) : 0;
}

Connection::Connection(pg_conn* conn, std::string description, std::string role,
                       std::string application_name)
    : conn_(conn),
      description_(std::move(description)),
      role_(std::move(role)),
      application_name_(std::move(application_name)) {}

Connection::~Connection() {
  if (conn_) PQfinish(conn_);
}

Result<std::unique_ptr<Connection>> Connection::Open(const ConnectOptions& options) {
  std::string where = DescribeDsn(options.dsn);
  // Our defaults come before dbname so the user's DSN overrides them; the
  // password (from a file) comes after so it overrides the DSN.
  std::vector<const char*> keys = {"connect_timeout",
                                   "keepalives_idle",
                                   "keepalives_interval",
                                   "keepalives_count",
                                   "application_name",
                                   "client_encoding",
                                   "dbname"};
  std::vector<const char*> vals = {
      "10", "10", "5", "3", options.application_name.c_str(), "UTF8", options.dsn.c_str()};
  if (!options.password.empty()) {
    keys.push_back("password");
    vals.push_back(options.password.c_str());
  }
  keys.push_back(nullptr);
  vals.push_back(nullptr);
  PGconn* conn = PQconnectdbParams(keys.data(), vals.data(), /*expand_dbname=*/1);
  if (!conn) return Status::Fatal("out of memory opening a PostgreSQL connection");
  if (PQstatus(conn) != CONNECTION_OK) {
    Status st = ConnectFailure(options.role, where, PQerrorMessage(conn));
    PQfinish(conn);
    return st;
  }
  std::unique_ptr<Connection> c(new Connection(conn, options.role + " database " + where,
                                               options.role, options.application_name));
  PQsetNoticeProcessor(conn, NoticeToLog, const_cast<char*>(c->role_.c_str()));
  DT_RETURN_IF_ERROR(c->Exec(kSessionSetup));
  if (!options.synchronous_commit.empty()) {
    DT_RETURN_IF_ERROR(
        c->Exec(fmt::format("SET synchronous_commit = {}", options.synchronous_commit)));
  }
  return c;
}

Fault Connection::InjectedFault(std::string_view sql) const {
  FaultHook* hook = g_fault_hook.load(std::memory_order_acquire);
  if (hook == nullptr) return Fault::kNone;
  return hook->OnStatement({role_, application_name_, sql});
}

void Connection::Cut() {
  if (const int fd = PQsocket(conn_); fd >= 0) shutdown(fd, SHUT_RDWR);
  // Reading finds the end of the stream: libpq marks the connection bad.
  PQconsumeInput(conn_);
}

Status Connection::InjectedError(Fault fault, std::string_view what, bool commit) {
  last_sqlstate_.clear();
  if (fault == Fault::kFail) {
    return Status::Retryable(
        fmt::format("{} failed on the {}: injected fault", what, description_));
  }
  Cut();
  if (commit) {
    return Status::InDoubt(fmt::format(
        "COMMIT on the {}: the connection was lost before the outcome was known (injected "
        "fault)",
        description_));
  }
  return Status::Retryable(
      fmt::format("{} failed: lost the connection to the {} (injected fault)", what, description_));
}

Status Connection::ConnectionError(std::string_view what) const {
  std::string msg = OneLine(PQerrorMessage(conn_));
  if (PQstatus(conn_) == CONNECTION_BAD) {
    return Status::Retryable(
        fmt::format("{} failed: lost the connection to the {} ({})", what, description_, msg));
  }
  return Status::Retryable(fmt::format("{} failed on the {}: {}", what, description_, msg));
}

Status Connection::ResultError(const pg_result* res, std::string_view what) const {
  last_sqlstate_.clear();
  if (!res) return ConnectionError(what);
  const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  std::string sqlstate = state ? state : "";
  last_sqlstate_ = sqlstate;
  if (sqlstate.empty() || PQstatus(conn_) == CONNECTION_BAD) return ConnectionError(what);
  std::string msg = OneLine(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                                ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                                : PQresultErrorMessage(res));
  const char* detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
  const char* hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
  std::string text =
      fmt::format("{} failed on the {}: {} (SQLSTATE {})", what, description_, msg, sqlstate);
  if (detail) text += "; " + OneLine(detail);
  if (hint) text += "; hint: " + OneLine(hint);
  if (sqlstate == "42501") {
    text += "; grant the privilege to the connecting role (see docs/operations.md, Privileges)";
  }
  switch (ClassifySqlState(sqlstate)) {
    case StatusCode::kRetryable:
      return Status::Retryable(text);
    case StatusCode::kBadConfig:
      return Status::BadConfig(text);
    case StatusCode::kBadData:
      return Status::BadData(text);
    default:
      return Status::Fatal(text);
  }
}

namespace {

// libpq's arrays for text parameters: PQexecParams and PQsendQueryParams
// want NUL-terminated text, so the views are copied.
struct TextParams {
  explicit TextParams(std::span<const Param> params)
      : values(params.size()), lengths(params.size()), formats(params.size(), 0) {
    owned.reserve(params.size());  // no reallocation: values point into it
    for (size_t i = 0; i < params.size(); ++i) {
      if (!params[i]) {
        owned.emplace_back();
        continue;
      }
      const std::string& v = owned.emplace_back(params[i]->data(), params[i]->size());
      values[i] = v.c_str();
      lengths[i] = static_cast<int>(v.size());
    }
  }
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
  std::vector<std::string> owned;
};

}  // namespace

Status Connection::Exec(std::string_view sql) {
  DT_RETURN_IF_ERROR(Settle());
  const Fault fault = InjectedFault(sql);
  if (fault == Fault::kFail || fault == Fault::kLoseBefore) {
    return InjectedError(fault, "a statement", sql == "COMMIT");
  }
  std::string q(sql);
  PGresult* res = PQexec(conn_, q.c_str());
  Status st;
  for (;;) {
    if (!res) {
      if (PQstatus(conn_) == CONNECTION_BAD) st = ConnectionError("a statement");
      break;
    }
    ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK && s != PGRES_EMPTY_QUERY && st.ok()) {
      st = ResultError(res, "a statement");
    }
    PQclear(res);
    // PQexec returns the last result; nothing more to read.
    break;
  }
  if (fault == Fault::kLoseAfter) return InjectedError(fault, "a statement", sql == "COMMIT");
  return st;
}

Result<QueryResult> Connection::Query(std::string_view sql, std::span<const Param> params) {
  DT_RETURN_IF_ERROR(Settle());
  const Fault fault = InjectedFault(sql);
  if (fault == Fault::kFail || fault == Fault::kLoseBefore) {
    return InjectedError(fault, "a query", false);
  }
  std::string q(sql);
  const TextParams p(params);
  PGresult* res = PQexecParams(conn_, q.c_str(), static_cast<int>(params.size()), nullptr,
                               p.values.data(), p.lengths.data(), p.formats.data(), 0);
  QueryResult out(res);
  if (fault == Fault::kLoseAfter) return InjectedError(fault, "a query", false);
  if (!res) return ConnectionError("a query");
  ExecStatusType s = PQresultStatus(res);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
    std::string what = "query \"" + q.substr(0, 60) + (q.size() > 60 ? "...\"" : "\"");
    return ResultError(res, what);
  }
  return out;
}

namespace {
// Statement::prepare's names, unique in the process (so in every session).
std::atomic<uint64_t> prepared_names{0};
}  // namespace

Status Connection::ExecPipeline(std::span<const Statement> statements,
                                std::vector<QueryResult>* results) {
  DT_RETURN_IF_ERROR(Settle());
  last_sqlstate_.clear();
  last_failed_statement_ = SIZE_MAX;
  if (results) results->clear();
  const bool ends_in_commit = !statements.empty() && statements.back().sql == "COMMIT";
  Fault fault = Fault::kNone;
  for (size_t i = 0; i < statements.size() && fault == Fault::kNone; ++i) {
    fault = InjectedFault(statements[i].sql);
  }
  if (fault == Fault::kFail || fault == Fault::kLoseBefore) {
    return InjectedError(fault, "a pipeline", ends_in_commit);
  }
  if (PQenterPipelineMode(conn_) != 1) return ConnectionError("entering pipeline mode");
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<std::string> owned;
  // Per statement: its prepared name ("" for an unnamed statement), and
  // whether a Parse for it went first in this pipeline (its result comes
  // first; the name counts as prepared only once that result is read as a
  // success: after an error the server skips the rest of the pipeline).
  std::vector<std::string> names(statements.size());
  std::vector<bool> parsed(statements.size(), false);
  std::unordered_map<std::string_view, size_t> new_names;  // sql -> statement parsing it
  for (size_t n = 0; n < statements.size(); ++n) {
    const Statement& st = statements[n];
    if (!st.prepare) continue;
    if (auto it = prepared_.find(st.sql); it != prepared_.end()) {
      names[n] = it->second;
    } else if (auto it2 = new_names.find(st.sql); it2 != new_names.end()) {
      names[n] = names[it2->second];
    } else if (prepared_.size() + new_names.size() < kMaxPrepared) {
      // Never a name given out before, even one whose Parse may have run
      // without our reading its result (a pipeline cut short).
      names[n] = fmt::format("dt_s{}", prepared_names.fetch_add(1, std::memory_order_relaxed));
      parsed[n] = true;
      new_names.emplace(st.sql, n);
    }
  }
  for (size_t n = 0; n < statements.size(); ++n) {
    const Statement& st = statements[n];
    values.assign(st.params.size(), nullptr);
    lengths.assign(st.params.size(), 0);
    owned.assign(st.params.size(), std::string());
    for (size_t i = 0; i < st.params.size(); ++i) {
      if (!st.params[i]) continue;
      owned[i].assign(st.params[i]->data(), st.params[i]->size());
      values[i] = owned[i].c_str();
      lengths[i] = static_cast<int>(owned[i].size());
    }
    if (parsed[n] && PQsendPrepare(conn_, names[n].c_str(), st.sql.c_str(),
                                   static_cast<int>(st.params.size()), nullptr) != 1) {
      Status err = ConnectionError("sending a pipelined statement");
      PQexitPipelineMode(conn_);
      return err;
    }
    const int sent =
        names[n].empty()
            ? PQsendQueryParams(conn_, st.sql.c_str(), static_cast<int>(st.params.size()), nullptr,
                                values.data(), lengths.data(), nullptr, 0)
            : PQsendQueryPrepared(conn_, names[n].c_str(), static_cast<int>(st.params.size()),
                                  values.data(), lengths.data(), nullptr, 0);
    if (sent != 1) {
      Status err = ConnectionError("sending a pipelined statement");
      PQexitPipelineMode(conn_);
      return err;
    }
  }
  if (PQpipelineSync(conn_) != 1) {
    Status err = ConnectionError("sending a pipeline");
    PQexitPipelineMode(conn_);
    return err;
  }
  Status first;
  bool lost = false;
  for (size_t i = 0; i < statements.size(); ++i) {
    if (parsed[i]) {
      // The Parse's own result, then its end.
      PGresult* pres = PQgetResult(conn_);
      if (!pres) {
        if (PQstatus(conn_) == CONNECTION_BAD) {
          lost = true;
          break;
        }
      } else {
        ExecStatusType ps = PQresultStatus(pres);
        if (ps == PGRES_COMMAND_OK) {
          prepared_.emplace(statements[i].sql, names[i]);
        } else if (ps == PGRES_FATAL_ERROR && first.ok()) {
          last_failed_statement_ = i;
          std::string q = statements[i].sql.substr(0, 60);
          first = ResultError(
              pres, "preparing \"" + q + (statements[i].sql.size() > 60 ? "...\"" : "\""));
        }
        PQclear(pres);
        while ((pres = PQgetResult(conn_)) != nullptr) PQclear(pres);
      }
    }
    PGresult* res = PQgetResult(conn_);
    if (!res) {
      if (PQstatus(conn_) == CONNECTION_BAD) {
        lost = true;
        break;
      }
      if (results) results->emplace_back();
      continue;
    }
    ExecStatusType s = PQresultStatus(res);
    if (s == PGRES_FATAL_ERROR && first.ok()) {
      last_failed_statement_ = i;
      std::string q = statements[i].sql.substr(0, 60);
      first =
          ResultError(res, "statement \"" + q + (statements[i].sql.size() > 60 ? "...\"" : "\""));
    }
    if (results) {
      results->emplace_back(res);
    } else {
      PQclear(res);
    }
    // Each statement's results end with a NULL.
    while ((res = PQgetResult(conn_)) != nullptr) PQclear(res);
  }
  if (!lost) {
    // The sync point.
    for (;;) {
      PGresult* res = PQgetResult(conn_);
      if (!res) {
        if (PQstatus(conn_) == CONNECTION_BAD) lost = true;
        break;
      }
      bool sync = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
      PQclear(res);
      if (sync) break;
    }
  }
  PQexitPipelineMode(conn_);
  if (fault == Fault::kLoseAfter && !lost) {
    if (results) results->clear();
    return InjectedError(fault, "a pipeline", ends_in_commit && first.ok());
  }
  if (lost) {
    if (ends_in_commit && first.ok()) {
      return Status::InDoubt(
          fmt::format("COMMIT on the {}: the connection was lost before the outcome was known ({})",
                      description_, OneLine(PQerrorMessage(conn_))));
    }
    return ConnectionError("a pipeline");
  }
  return first;
}

Status Connection::Send(std::string_view sql, std::span<const Param> params) {
  DT_RETURN_IF_ERROR(Settle());
  const Fault fault = InjectedFault(sql);
  if (fault == Fault::kFail || fault == Fault::kLoseBefore) {
    return InjectedError(fault, "a statement", false);
  }
  std::string q(sql);
  const TextParams p(params);
  // libpq copies the parameters into its output buffer: `p` may go.
  if (PQsendQueryParams(conn_, q.c_str(), static_cast<int>(params.size()), nullptr, p.values.data(),
                        p.lengths.data(), p.formats.data(), 0) != 1) {
    return ConnectionError("a statement");
  }
  in_flight_ = true;
  sent_status_ = Status::OK();
  if (fault == Fault::kLoseAfter) {
    (void)Settle();
    return InjectedError(fault, "a statement", false);
  }
  return Status::OK();
}

Result<QueryResult> Connection::TakeSent() {
  DT_RETURN_IF_ERROR(Settle());
  if (!sent_status_.ok()) return sent_status_;
  return std::move(sent_result_);
}

Status Connection::Settle() {
  if (!in_flight_) return Status::OK();
  in_flight_ = false;
  sent_result_ = QueryResult();
  bool got = false;
  while (PGresult* res = PQgetResult(conn_)) {
    if (got) {
      PQclear(res);
      continue;
    }
    got = true;
    const ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
      sent_status_ = ResultError(res, "a statement sent ahead");
    }
    sent_result_ = QueryResult(res);
  }
  if (!got) sent_status_ = ConnectionError("a statement sent ahead");
  return sent_status_;
}

Status Connection::Commit() {
  DT_RETURN_IF_ERROR(Settle());
  const Fault fault = InjectedFault("COMMIT");
  if (fault == Fault::kFail || fault == Fault::kLoseBefore) {
    return InjectedError(fault, "COMMIT", true);
  }
  PGresult* res = PQexec(conn_, "COMMIT");
  QueryResult holder(res);
  if (fault == Fault::kLoseAfter) return InjectedError(fault, "COMMIT", true);
  if (!res || PQstatus(conn_) == CONNECTION_BAD) {
    return Status::InDoubt(
        fmt::format("COMMIT on the {}: the connection was lost before the outcome was known ({})",
                    description_, OneLine(PQerrorMessage(conn_))));
  }
  if (PQresultStatus(res) != PGRES_COMMAND_OK) return ResultError(res, "COMMIT");
  // COMMIT of a failed transaction reports ROLLBACK.
  if (std::string_view(PQcmdStatus(res)) == "ROLLBACK") {
    return Status::Fatal(
        fmt::format("COMMIT on the {} rolled back an aborted transaction", description_));
  }
  return Status::OK();
}

void Connection::RollbackQuietly() {
  (void)Settle();  // its error is the reason to roll back
  if (PQstatus(conn_) != CONNECTION_OK) return;
  if (PQtransactionStatus(conn_) == PQTRANS_IDLE) return;
  PQclear(PQexec(conn_, "ROLLBACK"));
}

Status Connection::CopyIn(std::string_view copy_sql, std::string_view data) {
  return CopyIn(copy_sql, std::span<const std::string_view>(&data, 1));
}

Status Connection::CopyIn(std::string_view copy_sql, std::span<const std::string_view> pieces) {
  DT_RETURN_IF_ERROR(Settle());
  const Fault fault = InjectedFault(copy_sql);
  if (fault == Fault::kFail || fault == Fault::kLoseBefore) {
    return InjectedError(fault, "COPY", false);
  }
  std::string q(copy_sql);
  PGresult* res = PQexec(conn_, q.c_str());
  if (!res) return ConnectionError("COPY");
  if (PQresultStatus(res) != PGRES_COPY_IN) {
    Status st = ResultError(res, "COPY");
    PQclear(res);
    return st;
  }
  PQclear(res);
  constexpr size_t kPiece = 1 << 20;
  for (std::string_view data : pieces) {
    for (size_t off = 0; off < data.size(); off += kPiece) {
      size_t n = std::min(kPiece, data.size() - off);
      if (PQputCopyData(conn_, data.data() + off, static_cast<int>(n)) != 1) {
        return ConnectionError("COPY data");
      }
    }
  }
  if (PQputCopyEnd(conn_, nullptr) != 1) return ConnectionError("COPY end");
  Status st;
  while ((res = PQgetResult(conn_)) != nullptr) {
    if (PQresultStatus(res) != PGRES_COMMAND_OK && st.ok()) st = ResultError(res, "COPY");
    PQclear(res);
  }
  if (st.ok() && PQstatus(conn_) == CONNECTION_BAD) st = ConnectionError("COPY");
  if (fault == Fault::kLoseAfter) return InjectedError(fault, "COPY", false);
  return st;
}

Status Connection::CopyOut(std::string_view copy_sql,
                           const std::function<Status(std::string_view)>& on_row) {
  DT_RETURN_IF_ERROR(Settle());
  std::string q(copy_sql);
  PGresult* res = PQexec(conn_, q.c_str());
  if (!res) return ConnectionError("COPY");
  if (PQresultStatus(res) != PGRES_COPY_OUT) {
    Status st = ResultError(res, "COPY");
    PQclear(res);
    return st;
  }
  PQclear(res);
  Status st;
  for (;;) {
    char* buf = nullptr;
    int n = PQgetCopyData(conn_, &buf, 0);
    if (n > 0) {
      std::string_view line(buf, static_cast<size_t>(n));
      if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
      if (st.ok()) st = on_row(line);  // keep draining after a callback error
      PQfreemem(buf);
      continue;
    }
    if (n == -2) return ConnectionError("COPY");
    break;  // -1: done
  }
  while ((res = PQgetResult(conn_)) != nullptr) {
    if (PQresultStatus(res) != PGRES_COMMAND_OK && st.ok()) st = ResultError(res, "COPY");
    PQclear(res);
  }
  return st;
}

Status Connection::Listen(std::string_view channel) {
  return Exec("LISTEN " + std::string(channel));
}

Result<int> Connection::WaitForNotifications(int timeout_ms, int wake_fd) {
  DT_RETURN_IF_ERROR(Settle());
  auto drain = [&]() -> Result<int> {
    if (!PQconsumeInput(conn_)) return ConnectionError("waiting for notifications");
    int n = 0;
    while (PGnotify* note = PQnotifies(conn_)) {
      PQfreemem(note);
      ++n;
    }
    return n;
  };
  DT_ASSIGN_OR_RETURN(int n, drain());
  if (n > 0 || timeout_ms <= 0) return n;
  pollfd fds[2] = {{PQsocket(conn_), POLLIN, 0}, {wake_fd, POLLIN, 0}};
  int rc = poll(fds, wake_fd >= 0 ? 2 : 1, timeout_ms);
  if (rc < 0 && errno != EINTR) return Status::Retryable("poll() on the database socket failed");
  return drain();
}

bool Connection::IsBroken() const { return PQstatus(conn_) != CONNECTION_OK; }

bool Connection::InTransaction() const {
  auto s = PQtransactionStatus(conn_);
  return s == PQTRANS_INTRANS || s == PQTRANS_INERROR || s == PQTRANS_ACTIVE;
}

int Connection::server_version() const { return PQserverVersion(conn_); }
std::string Connection::database() const {
  const char* db = PQdb(conn_);
  return db ? db : "";
}

int Connection::backend_pid() const { return PQbackendPID(conn_); }

Result<std::unique_ptr<Connection>> OpenWithRetry(const ConnectOptions& options, int deadline_ms,
                                                  const std::function<bool()>& should_stop) {
  const int64_t deadline = MonotonicMicros() + int64_t{deadline_ms} * 1000;
  Backoff backoff(200, 5000);
  for (;;) {
    auto conn = Connection::Open(options);
    if (conn.ok() || !conn.status().IsRetryable()) return conn;
    if (MonotonicMicros() >= deadline || (should_stop && should_stop())) return conn;
    int delay = backoff.NextDelayMs();
    if (backoff.attempts() == 1 || backoff.attempts() % 10 == 0) {
      spdlog::warn("{} (retrying)", conn.status().message());
    }
    for (int waited = 0; waited < delay; waited += 50) {
      if (should_stop && should_stop()) return conn;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

std::string TextArrayLiteral(const std::vector<std::optional<std::string>>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out.push_back(',');
    if (!items[i]) {
      out += "NULL";
      continue;
    }
    out.push_back('"');
    for (char c : *items[i]) {
      if (c == '"' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('"');
  }
  out.push_back('}');
  return out;
}

void AppendCopyEscaped(std::string_view value, std::string* out) {
  size_t start = 0;
  for (size_t i = 0; i < value.size(); ++i) {
    char c = value[i];
    char esc;
    switch (c) {
      case '\\':
        esc = '\\';
        break;
      case '\t':
        esc = 't';
        break;
      case '\n':
        esc = 'n';
        break;
      case '\r':
        esc = 'r';
        break;
      default:
        continue;
    }
    out->append(value.data() + start, i - start);
    out->push_back('\\');
    out->push_back(esc);
    start = i + 1;
  }
  out->append(value.data() + start, value.size() - start);
}

bool SplitCopyLine(std::string_view line, std::vector<std::optional<std::string>>* fields) {
  fields->clear();
  size_t i = 0;
  for (;;) {
    size_t end = line.find('\t', i);
    std::string_view raw = line.substr(i, end == std::string_view::npos ? end : end - i);
    if (raw == "\\N") {
      fields->emplace_back(std::nullopt);
    } else {
      std::string v;
      v.reserve(raw.size());
      for (size_t k = 0; k < raw.size(); ++k) {
        char c = raw[k];
        if (c != '\\') {
          v.push_back(c);
          continue;
        }
        if (++k >= raw.size()) return false;
        char e = raw[k];
        switch (e) {
          case 'b':
            v.push_back('\b');
            break;
          case 'f':
            v.push_back('\f');
            break;
          case 'n':
            v.push_back('\n');
            break;
          case 'r':
            v.push_back('\r');
            break;
          case 't':
            v.push_back('\t');
            break;
          case 'v':
            v.push_back('\v');
            break;
          case 'x': {
            int val = 0, digits = 0;
            while (digits < 2 && k + 1 < raw.size() &&
                   std::isxdigit(static_cast<unsigned char>(raw[k + 1]))) {
              char h = raw[++k];
              val = val * 16 +
                    (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (h | 0x20) - 'a' + 10);
              ++digits;
            }
            if (digits == 0) return false;
            v.push_back(static_cast<char>(val));
            break;
          }
          default:
            if (e >= '0' && e <= '7') {
              int val = e - '0', digits = 1;
              while (digits < 3 && k + 1 < raw.size() && raw[k + 1] >= '0' && raw[k + 1] <= '7') {
                val = val * 8 + (raw[++k] - '0');
                ++digits;
              }
              v.push_back(static_cast<char>(val));
            } else {
              v.push_back(e);  // \\ and any other escaped character stand for themselves
            }
        }
      }
      fields->emplace_back(std::move(v));
    }
    if (end == std::string_view::npos) break;
    i = end + 1;
  }
  return true;
}

}  // namespace datatunnel::pg
