// The metrics endpoint: /metrics, /healthz, /readyz over real HTTP, the
// Prometheus text format checked line by line, bad listen addresses refused
// with kBadConfig; and Histogram::Quantile.
#include "metrics/metrics.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "metrics/http_server.h"

namespace datatunnel::metrics {
namespace {

using Tables = std::vector<std::pair<std::string, std::string>>;

httplib::Result Get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  return client.Get(path.c_str());
}

std::unique_ptr<HttpServer> StartOrDie(const Metrics* m, std::function<Readiness()> ready = {}) {
  auto server = HttpServer::Start("127.0.0.1:0", m, std::move(ready));
  EXPECT_TRUE(server.ok()) << server.status().message();
  if (!server.ok()) std::abort();
  return std::move(*server);
}

TEST(HttpServer, ServesTheThreeEndpoints) {
  Metrics m(Tables{{"public.a", "public.a"}});
  auto server = StartOrDie(&m);
  ASSERT_GT(server->port(), 0);

  auto health = Get(server->port(), "/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");

  auto ready = Get(server->port(), "/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);  // no readiness callback: always ready
  EXPECT_EQ(ready->body, "ready\n");

  auto metrics = Get(server->port(), "/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0), 0u)
      << metrics->get_header_value("Content-Type");
  EXPECT_NE(metrics->body.find("# TYPE datatunnel_changes_captured_total counter"),
            std::string::npos);

  for (const char* path : {"/", "/metricsx", "/metrics/", "/healthz/x", "/nope"}) {
    auto r = Get(server->port(), path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 404) << path;
  }
  httplib::Client client("127.0.0.1", server->port());
  auto post = client.Post("/metrics", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 404);
}

TEST(HttpServer, CountersShowTheirValues) {
  Metrics m(Tables{{"public.a", "other.a"}, {"public.b", "public.b"}});
  m.table(0).captured += 5;
  m.table(0).applied += 3;
  m.table(1).dead_letters += 2;
  m.table(1).latency.Observe(0.004);
  m.errors += 7;
  m.target_connected = 1;
  auto server = StartOrDie(&m);
  auto r = Get(server->port(), "/metrics");
  ASSERT_TRUE(r);
  const std::string& body = r->body;
  EXPECT_NE(body.find("datatunnel_changes_captured_total{table=\"public.a\"} 5\n"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("datatunnel_changes_applied_total{table=\"public.a\"} 3\n"),
            std::string::npos);
  EXPECT_NE(body.find("datatunnel_dead_letters_total{table=\"public.b\"} 2\n"), std::string::npos);
  EXPECT_NE(body.find("datatunnel_lag_changes{table=\"public.a\"} 2\n"), std::string::npos);
  EXPECT_NE(body.find("datatunnel_errors_total 7\n"), std::string::npos);
  EXPECT_NE(body.find("datatunnel_target_connected 1\n"), std::string::npos);
  EXPECT_NE(
      body.find(
          "datatunnel_end_to_end_latency_seconds_bucket{table=\"public.b\",le=\"0.005\"} 1\n"),
      std::string::npos);
  EXPECT_NE(body.find("datatunnel_end_to_end_latency_seconds_count{table=\"public.b\"} 1\n"),
            std::string::npos);

  // Values are read on every scrape.
  m.table(0).captured += 1;
  r = Get(server->port(), "/metrics");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("datatunnel_changes_captured_total{table=\"public.a\"} 6\n"),
            std::string::npos);
}

// --- A checker for the Prometheus text format, version 0.0.4. ---

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses `{a="x",b="y\"z"}` starting at `*pos` (on the '{'). Returns false
// when malformed.
bool ParseLabels(const std::string& line, size_t* pos, std::map<std::string, std::string>* out,
                 std::string* error) {
  static const std::regex kLabelName("[a-zA-Z_][a-zA-Z0-9_]*");
  size_t i = *pos + 1;
  while (i < line.size() && line[i] != '}') {
    size_t eq = line.find('=', i);
    if (eq == std::string::npos) {
      *error = "label without '='";
      return false;
    }
    std::string name = line.substr(i, eq - i);
    if (!std::regex_match(name, kLabelName) || name.rfind("__", 0) == 0) {
      *error = "bad label name \"" + name + "\"";
      return false;
    }
    if (eq + 1 >= line.size() || line[eq + 1] != '"') {
      *error = "label value not quoted";
      return false;
    }
    std::string value;
    size_t k = eq + 2;
    for (; k < line.size() && line[k] != '"'; ++k) {
      if (line[k] == '\\') {
        if (++k >= line.size()) break;
        if (line[k] == 'n') {
          value.push_back('\n');
        } else if (line[k] == '\\' || line[k] == '"') {
          value.push_back(line[k]);
        } else {
          *error = "bad escape in label value";
          return false;
        }
      } else {
        value.push_back(line[k]);
      }
    }
    if (k >= line.size()) {
      *error = "unterminated label value";
      return false;
    }
    if (!out->emplace(name, value).second) {
      *error = "label \"" + name + "\" repeated";
      return false;
    }
    i = k + 1;
    if (i < line.size() && line[i] == ',') ++i;
  }
  if (i >= line.size()) {
    *error = "unterminated label set";
    return false;
  }
  *pos = i + 1;
  return true;
}

bool ParseValue(const std::string& text, double* out) {
  if (text == "+Inf") return *out = HUGE_VAL, true;
  if (text == "-Inf") return *out = -HUGE_VAL, true;
  if (text == "NaN") return *out = NAN, true;
  if (text.empty()) return false;
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}

std::string LabelKey(std::map<std::string, std::string> labels, bool drop_le) {
  if (drop_le) labels.erase("le");
  std::string key;
  for (const auto& [k, v] : labels) key += k + "=" + v + ";";
  return key;
}

// Checks `text` against the format; returns the problems found (none: OK).
std::vector<std::string> CheckExposition(const std::string& text, std::vector<Sample>* samples) {
  static const std::regex kName("[a-zA-Z_:][a-zA-Z0-9_:]*");
  std::vector<std::string> problems;
  std::map<std::string, std::string> types;  // family -> type
  std::set<std::string> finished;            // families whose group of lines ended
  std::set<std::string> series;
  std::string current;  // family of the previous line
  if (text.empty() || text.back() != '\n') problems.push_back("does not end with a newline");
  std::istringstream in(text);
  std::string line;
  int n = 0;
  auto problem = [&](const std::string& what) {
    problems.push_back("line " + std::to_string(n) + ": " + what + ": " + line);
  };
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, kind, name, type;
      words >> hash >> kind >> name >> type;
      if (kind != "TYPE" && kind != "HELP") continue;  // other comments are free text
      if (!std::regex_match(name, kName)) problem("bad metric name");
      if (name != current && finished.count(name)) problem("family split in two groups");
      if (name != current && !current.empty()) finished.insert(current);
      current = name;
      if (kind == "TYPE") {
        static const std::set<std::string> kTypes = {"counter", "gauge", "histogram", "summary",
                                                     "untyped"};
        if (!kTypes.count(type)) problem("unknown type");
        if (types.count(name)) problem("second TYPE line");
        types[name] = type;
      }
      continue;
    }
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (!std::regex_match(s.name, kName)) {
      problem("bad metric name");
      continue;
    }
    if (i < line.size() && line[i] == '{') {
      std::string error;
      if (!ParseLabels(line, &i, &s.labels, &error)) {
        problem(error);
        continue;
      }
    }
    if (i >= line.size() || line[i] != ' ') {
      problem("no value");
      continue;
    }
    std::string rest = line.substr(i + 1), value_text = rest, timestamp;
    if (size_t sp = rest.find(' '); sp != std::string::npos) {
      value_text = rest.substr(0, sp);
      timestamp = rest.substr(sp + 1);
    }
    if (!ParseValue(value_text, &s.value)) problem("bad value");
    if (!timestamp.empty() && timestamp.find_first_not_of("-0123456789") != std::string::npos) {
      problem("bad timestamp");
    }
    // The family: the sample's name, or for histograms its base name.
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string sfx = suffix;
      if (s.name.size() > sfx.size() &&
          s.name.compare(s.name.size() - sfx.size(), sfx.size(), sfx) == 0) {
        std::string base = s.name.substr(0, s.name.size() - sfx.size());
        if (types.count(base) && types[base] == "histogram") family = base;
      }
    }
    if (!types.count(family)) {
      problem("no # TYPE line before the first sample");
    } else {
      const std::string& type = types[family];
      if (type == "counter" &&
          (s.name.size() < 6 || s.name.compare(s.name.size() - 6, 6, "_total") != 0)) {
        problem("counter name does not end in _total");
      }
      if (type == "counter" && !(s.value >= 0)) problem("negative counter");
      if (type == "histogram" && s.name == family + "_bucket" && !s.labels.count("le")) {
        problem("bucket without le");
      }
    }
    if (family != current) {
      if (finished.count(family)) problem("family split in two groups");
      if (!current.empty()) finished.insert(current);
      current = family;
    }
    if (!series.insert(s.name + "|" + LabelKey(s.labels, false)).second) {
      problem("duplicate series");
    }
    samples->push_back(std::move(s));
  }

  // Histograms: per label set, buckets in increasing le, cumulative, the last
  // le="+Inf" and equal to _count.
  for (const auto& [family, type] : types) {
    if (type != "histogram") continue;
    std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // labels -> (le, n)
    std::map<std::string, double> counts;
    std::set<std::string> sums;
    for (const Sample& s : *samples) {
      const std::string key = LabelKey(s.labels, true);
      if (s.name == family + "_bucket") {
        double le = 0;
        if (!ParseValue(s.labels.at("le"), &le)) {
          problems.push_back(family + ": bad le \"" + s.labels.at("le") + "\"");
        }
        buckets[key].emplace_back(le, s.value);
      } else if (s.name == family + "_count") {
        counts[key] = s.value;
      } else if (s.name == family + "_sum") {
        sums.insert(key);
      }
    }
    for (const auto& [key, bs] : buckets) {
      const std::string where = family + "{" + key + "}: ";
      for (size_t i = 1; i < bs.size(); ++i) {
        if (!(bs[i].first > bs[i - 1].first)) problems.push_back(where + "le not increasing");
        if (bs[i].second < bs[i - 1].second) problems.push_back(where + "buckets not cumulative");
      }
      if (bs.empty() || bs.back().first != HUGE_VAL) {
        problems.push_back(where + "no le=\"+Inf\" bucket last");
      } else if (!counts.count(key) || counts[key] != bs.back().second) {
        problems.push_back(where + "_count differs from the +Inf bucket");
      }
      if (!sums.count(key)) problems.push_back(where + "no _sum");
    }
  }
  return problems;
}

TEST(Exposition, CheckerCatchesMistakes) {
  std::vector<Sample> s;
  EXPECT_TRUE(CheckExposition("# TYPE a_total counter\na_total{x=\"1\"} 3\n", &s).empty());
  EXPECT_FALSE(CheckExposition("a_total 3\n", &s).empty());                     // no TYPE
  EXPECT_FALSE(CheckExposition("# TYPE a counter\na 3\n", &s).empty());         // _total
  EXPECT_FALSE(CheckExposition("# TYPE 1a gauge\n1a 3\n", &s).empty());         // name
  EXPECT_FALSE(CheckExposition("# TYPE a gauge\na{x=\"1} 3\n", &s).empty());    // quote
  EXPECT_FALSE(CheckExposition("# TYPE a gauge\na{x=\"1\"} x\n", &s).empty());  // value
  EXPECT_FALSE(CheckExposition("# TYPE a gauge\na 1\na 2\n", &s).empty());      // duplicate
  EXPECT_FALSE(CheckExposition("# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"     // no +Inf
                               "h_sum 1\nh_count 2\n",
                               &s)
                   .empty());
  EXPECT_FALSE(CheckExposition("# TYPE h histogram\nh_bucket{le=\"1\"} 2\n"  // not cumulative
                               "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                               &s)
                   .empty());
  EXPECT_FALSE(CheckExposition("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\n"  // count differs
                               "h_sum 1\nh_count 3\n",
                               &s)
                   .empty());
}

TEST(Exposition, RenderPrometheusIsWellFormed) {
  // A table name that needs escaping in a label value.
  Metrics m(Tables{{"public.a", "public.a"}, {"odd \"schema\".back\\slash\nnl", "public.b"}});
  for (size_t t = 0; t < m.size(); ++t) {
    m.table(t).captured += 10;
    m.table(t).published += 9;
    m.table(t).applied += 8;
    m.table(t).last_captured_us = 1'000'000;
    m.table(t).last_applied_us = 1'250'000;
    m.table(t).undelivered_age_us = 250'000;
    for (double s : {0.0005, 0.003, 0.003, 0.04, 0.7, 3.0, 42.0}) m.table(t).latency.Observe(s);
  }
  m.errors += 1;
  std::vector<Sample> samples;
  const std::string text = m.RenderPrometheus();
  std::vector<std::string> problems = CheckExposition(text, &samples);
  for (const auto& p : problems) ADD_FAILURE() << p;
  if (!problems.empty()) ADD_FAILURE() << text;

  bool escaped = false;
  for (const Sample& s : samples) {
    if (s.name == "datatunnel_changes_captured_total" && s.labels.count("table") &&
        s.labels.at("table") == "odd \"schema\".back\\slash\nnl") {
      escaped = true;
      EXPECT_EQ(s.value, 10);
    }
    if (s.name == "datatunnel_end_to_end_latency_seconds_count") {
      EXPECT_EQ(s.value, 7);
    }
    if (s.name == "datatunnel_lag_seconds") {
      EXPECT_DOUBLE_EQ(s.value, 0.25);
    }
  }
  EXPECT_TRUE(escaped) << "the escaped table label did not parse back";

  // The same holds for an empty pipeline.
  Metrics empty(Tables{});
  samples.clear();
  problems = CheckExposition(empty.RenderPrometheus(), &samples);
  for (const auto& p : problems) ADD_FAILURE() << p;
}

TEST(Exposition, ScrapesStayWellFormedUnderUpdates) {
  Metrics m(Tables{{"public.a", "public.a"}});
  auto server = StartOrDie(&m);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; !stop; ++i) {
      m.table(0).captured += 1;
      m.table(0).latency.Observe((i % 100) / 10.0);
    }
  });
  for (int i = 0; i < 20; ++i) {
    auto r = Get(server->port(), "/metrics");
    ASSERT_TRUE(r);
    std::vector<Sample> samples;
    std::vector<std::string> problems = CheckExposition(r->body, &samples);
    for (const auto& p : problems) ADD_FAILURE() << p;
    if (!problems.empty()) break;
  }
  stop = true;
  writer.join();
}

// Label values take the text format's three escapes and nothing else (not
// JSON's: a Prometheus parser refuses "\u0009").
TEST(Exposition, LabelValuesTakePrometheusEscapes) {
  EXPECT_EQ(EscapeLabelValue(R"("we\ird"."Tab ""q""")"), R"(\"we\\ird\".\"Tab \"\"q\"\"\")");
  EXPECT_EQ(EscapeLabelValue("two\nlines"), R"(two\nlines)");
  EXPECT_EQ(EscapeLabelValue("tab\there\r\x01"), "tab\there\r\x01");
  EXPECT_EQ(EscapeLabelValue("K\xc3\xa4se"), "K\xc3\xa4se");
  EXPECT_EQ(EscapeLabelValue(""), "");

  const std::string name = "we\\ird.Tab \"q\"\nand\ttab";
  Metrics m(Tables{{name, name}});
  m.table(0).captured += 3;
  std::vector<Sample> samples;
  const std::string text = m.RenderPrometheus();
  for (const auto& p : CheckExposition(text, &samples)) ADD_FAILURE() << p;
  size_t labelled = 0;
  for (const Sample& s : samples) {
    if (!s.labels.count("table")) continue;
    EXPECT_EQ(s.labels.at("table"), name) << s.name;
    ++labelled;
  }
  EXPECT_GT(labelled, 10u) << text;
}

TEST(HttpServer, ReadinessDecidesReadyz) {
  Metrics m(Tables{});
  std::mutex mu;
  Readiness state{false, "not connected to the target"};
  auto server = StartOrDie(&m, [&] {
    std::lock_guard<std::mutex> lock(mu);
    return state;
  });
  auto r = Get(server->port(), "/readyz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, "not connected to the target\n");
  // Not ready is not unhealthy.
  auto h = Get(server->port(), "/healthz");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);

  {
    std::lock_guard<std::mutex> lock(mu);
    state = {false, ""};
  }
  r = Get(server->port(), "/readyz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, "not ready\n");

  {
    std::lock_guard<std::mutex> lock(mu);
    state = {true, "ignored"};
  }
  r = Get(server->port(), "/readyz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "ready\n");
}

TEST(HttpServer, ThrowingReadinessIsA500NotACrash) {
  Metrics m(Tables{});
  auto server = StartOrDie(&m, []() -> Readiness { throw std::runtime_error("boom"); });
  auto r = Get(server->port(), "/readyz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
  EXPECT_NE(r->body.find("boom"), std::string::npos);
  // And the server still serves.
  r = Get(server->port(), "/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServer, RefusesBadAddresses) {
  Metrics m(Tables{});
  for (const char* bad :
       {"nonsense", "", "127.0.0.1:99999", "127.0.0.1:", "127.0.0.1:abc", "127.0.0.1:-1",
        "127.0.0.1:80x", "127.0.0.1:1234567", "::1:9187", "[::1", "[::1]9187", "[]:9187"}) {
    auto server = HttpServer::Start(bad, &m, {});
    ASSERT_FALSE(server.ok()) << bad;
    EXPECT_EQ(server.status().code(), StatusCode::kBadConfig) << bad;
    const std::string& msg = server.status().message();
    EXPECT_EQ(msg.rfind("metrics.listen \"" + std::string(bad) + "\": ", 0), 0u) << msg;
    EXPECT_NE(msg.find("[metrics] listen"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(HttpServer, RefusesAPortInUse) {
  Metrics m(Tables{});
  auto first = StartOrDie(&m);
  const std::string taken = "127.0.0.1:" + std::to_string(first->port());
  auto second = HttpServer::Start(taken, &m, {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kBadConfig);
  EXPECT_NE(second.status().message().find("in use"), std::string::npos)
      << second.status().message();
  // The first one is unaffected.
  auto r = Get(first->port(), "/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServer, AcceptsOtherAddressForms) {
  Metrics m(Tables{});
  for (const char* ok : {"localhost:0", ":0", "0.0.0.0:0"}) {
    auto server = HttpServer::Start(ok, &m, {});
    ASSERT_TRUE(server.ok()) << ok << ": " << server.status().message();
    auto r = Get((*server)->port(), "/healthz");
    ASSERT_TRUE(r) << ok;
    EXPECT_EQ(r->status, 200);
  }
}

TEST(HttpServer, StopsPromptlyAndReleasesThePort) {
  Metrics m(Tables{});
  int port = 0;
  for (int i = 0; i < 20; ++i) {  // start and stop at once: no hang, no leak
    auto server = StartOrDie(&m);
    port = server->port();
  }
  {
    // A client holding a keep-alive connection delays the destructor by at
    // most the keep-alive timeout.
    std::unique_ptr<httplib::Client> client;
    auto server = StartOrDie(&m);
    port = server->port();
    client = std::make_unique<httplib::Client>("127.0.0.1", port);
    client->set_keep_alive(true);
    auto r = client->Get("/healthz");
    ASSERT_TRUE(r);
    const auto start = std::chrono::steady_clock::now();
    server.reset();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  }
  auto r = Get(port, "/healthz");
  EXPECT_FALSE(r) << "still serving after the destructor";
  auto again = HttpServer::Start("127.0.0.1:" + std::to_string(port), &m, {});
  EXPECT_TRUE(again.ok()) << again.status().message();
}

TEST(TableMetrics, LagIsTheAgeOfTheOldestChangeHeld) {
  TableMetrics t;
  EXPECT_EQ(t.LagSeconds(5'000'000), 0.0);  // holds nothing: not behind
  t.last_captured_us = 1'000'000;           // a change applied long ago does not count
  t.last_applied_us = 1'500'000;
  EXPECT_EQ(t.LagSeconds(90'000'000), 0.0);
  t.unapplied_since_us = 2'000'000;  // a batch held since then: the lag grows
  EXPECT_DOUBLE_EQ(t.LagSeconds(3'000'000), 1.0);
  EXPECT_DOUBLE_EQ(t.LagSeconds(7'500'000), 5.5);
  t.undelivered_age_us = 9'000'000;  // the producer's wait is longer
  EXPECT_DOUBLE_EQ(t.LagSeconds(7'500'000), 9.0);
  t.unapplied_since_us = 0;
  t.undelivered_age_us = 0;
  EXPECT_EQ(t.LagSeconds(7'500'000), 0.0);
}

TEST(Histogram, Quantile) {
  Histogram empty;
  EXPECT_EQ(empty.Quantile(0.5), 0);

  Histogram one;
  one.Observe(0.003);  // in (0.002, 0.005]
  EXPECT_EQ(one.Quantile(0), 0.005);
  EXPECT_EQ(one.Quantile(0.5), 0.005);
  EXPECT_EQ(one.Quantile(1), 0.005);

  Histogram two;
  two.Observe(0.001);  // bucket le=0.001 (bounds are inclusive)
  two.Observe(9);      // (5, 10]
  EXPECT_EQ(two.Quantile(0.5), 0.001);
  EXPECT_EQ(two.Quantile(0.51), 10);
  EXPECT_EQ(two.Quantile(1), 10);

  Histogram h;
  for (int i = 0; i < 90; ++i) h.Observe(0.008);  // (0.005, 0.01]
  for (int i = 0; i < 9; ++i) h.Observe(0.15);    // (0.1, 0.2]
  h.Observe(100);                                 // past the last bound
  EXPECT_EQ(h.count(), 100u);
  EXPECT_EQ(h.Quantile(0.5), 0.01);
  EXPECT_EQ(h.Quantile(0.9), 0.01);
  EXPECT_EQ(h.Quantile(0.91), 0.2);
  EXPECT_EQ(h.Quantile(0.99), 0.2);
  EXPECT_EQ(h.Quantile(1), 30);  // the overflow bucket reports the largest bound
  EXPECT_EQ(h.Quantile(-1), 0.01);
  EXPECT_EQ(h.Quantile(2), 30);
  EXPECT_NEAR(h.sum(), 90 * 0.008 + 9 * 0.15 + 100, 1e-4);  // kept in microseconds
  EXPECT_EQ(h.bucket(Histogram::kBounds.size()), 1u);
}

}  // namespace
}  // namespace datatunnel::metrics
