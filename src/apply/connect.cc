#include "apply/connect.h"

#include <fmt/format.h>

#include <utility>
#include <vector>

#include "apply/debezium_decoder.h"
#include "core/json.h"
#include "core/wire.h"

namespace datatunnel::apply {

namespace dom = simdjson::dom;

namespace {

Status Bad(std::string_view what) { return Status::BadData(std::string(what)); }

void Copy(JsonWriter& w, dom::element el) {
  const std::string text = simdjson::minify(el);
  w.RawValue(text.data(), text.size(), rapidjson::kObjectType);
}

}  // namespace

bool IsConnectJson(std::string_view value) {
  size_t i = 0;
  auto skip = [&] {
    while (i < value.size() &&
           (value[i] == ' ' || value[i] == '\n' || value[i] == '\t' || value[i] == '\r')) {
      ++i;
    }
  };
  skip();
  if (i >= value.size() || value[i] != '{') return false;
  ++i;
  skip();
  return value.substr(i, 8) == "\"schema\"";
}

Status ConnectUnwrapper::ToEnvelope(std::string_view value, const TableSpec& target, bool rows,
                                    std::string* out) {
  padded_.assign(value);
  padded_.append(simdjson::SIMDJSON_PADDING, '\0');
  dom::element root;
  if (parser_.parse(padded_.data(), value.size(), false).get(root)) return Bad("not JSON");
  dom::object payload;
  if (root["payload"].get_object().get(payload)) {
    return Bad("a Connect JSON message without a \"payload\" object");
  }
  // The row's field schemas by name (before and after share one).
  std::vector<std::pair<std::string_view, dom::element>> fields;
  dom::array top;
  if (!root["schema"]["fields"].get_array().get(top)) {
    for (dom::element f : top) {
      std::string_view name;
      dom::array cols;
      if (f["field"].get_string().get(name) || (name != wire::kAfter && name != wire::kBefore) ||
          f["fields"].get_array().get(cols)) {
        continue;
      }
      for (dom::element c : cols) {
        std::string_view cname;
        if (!c["field"].get_string().get(cname)) fields.emplace_back(cname, c);
      }
      break;
    }
  }
  dom::object raw;
  const bool has_raw = !payload["source"]["raw"].get_object().get(raw);

  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  for (dom::key_value_pair kv : payload) {
    JsonKey(w, kv.key);
    if (kv.key == wire::kBefore || kv.key == wire::kAfter) {
      dom::object row;
      if (!rows || kv.value.get_object().get(row)) {
        w.Null();
        continue;
      }
      w.StartObject();
      for (dom::key_value_pair f : row) {
        std::string_view text;
        if (has_raw && !raw[f.key].get_string().get(text)) {
          JsonKey(w, f.key);
          JsonString(w, text);
          continue;
        }
        const int col = target.ColumnIndex(f.key);
        if (col < 0) {  // the decoder reports the column the target lacks
          JsonKey(w, f.key);
          Copy(w, f.value);
          continue;
        }
        if (f.value.is_null()) {
          JsonKey(w, f.key);
          w.Null();
          continue;
        }
        const Column& c = target.columns[static_cast<size_t>(col)];
        if (c.kind == ValueKind::kBytes && f.value.is_string()) {  // base64 either way
          JsonKey(w, f.key);
          JsonString(w, std::string_view(f.value.get_string().value_unsafe()));
          continue;
        }
        const dom::element* schema = nullptr;
        for (const auto& [name, el] : fields) {
          if (name == f.key) {
            schema = &el;
            break;
          }
        }
        text_.clear();
        bool absent = false;
        Status st = DebeziumValueText(f.value, c, schema, &text_, &absent);
        if (!st.ok()) return Bad(fmt::format("field \"{}\": {}", f.key, st.message()));
        if (absent) continue;
        JsonKey(w, f.key);
        JsonString(w, text_);
      }
      w.EndObject();
    } else if (kv.key == wire::kSource && kv.value.is_object()) {
      w.StartObject();
      for (dom::key_value_pair s : dom::object(kv.value)) {
        if (s.key == wire::kRaw) continue;
        JsonKey(w, s.key);
        Copy(w, s.value);
      }
      w.EndObject();
    } else {
      Copy(w, kv.value);
    }
  }
  w.EndObject();
  out->assign(buf.GetString(), buf.GetSize());
  return Status::OK();
}

}  // namespace datatunnel::apply
