#include "config_file.h"

#include <cctype>
#include <cstdlib>
#include <istream>
#include <map>
#include <set>
#include <sstream>

namespace errand {
namespace {

[[noreturn]] void Fail(int line, const std::string& what) {
  throw CLI::ConfigError("config file line " + std::to_string(line) + ": " + what);
}

bool IsBareKeyChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// A cursor over one line of a config file.
class LineParser {
 public:
  LineParser(const std::string& text, int line) : s_(text), line_(line) {}

  void SkipSpace() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t')) ++i_;
  }
  bool AtEndOrComment() {
    SkipSpace();
    return i_ == s_.size() || s_[i_] == '#';
  }
  char Peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  bool Eat(char c) {
    if (Peek() != c) return false;
    ++i_;
    return true;
  }

  std::string Key() {
    SkipSpace();
    if (Peek() == '"' || Peek() == '\'') return String();
    size_t start = i_;
    while (i_ < s_.size() && IsBareKeyChar(s_[i_])) ++i_;
    if (i_ == start) Fail(line_, "expected a key (key = value)");
    if (Peek() == '.') Fail(line_, "dotted keys are not supported; every key is top-level");
    return s_.substr(start, i_ - start);
  }

  // A scalar, or an array of scalars when `allow_array`.
  std::vector<std::string> Value(bool allow_array) {
    SkipSpace();
    char c = Peek();
    if (c == '[') {
      if (!allow_array) Fail(line_, "nested arrays are not supported");
      ++i_;
      std::vector<std::string> values;
      SkipSpace();
      if (Eat(']')) return values;
      while (true) {
        auto v = Value(false);
        values.push_back(v.front());
        SkipSpace();
        if (Eat(']')) return values;
        if (!Eat(',')) Fail(line_, "expected ',' or ']' in the array (arrays are one line)");
        SkipSpace();
        if (Eat(']')) return values;  // trailing comma
      }
    }
    if (c == '"' || c == '\'') return {String()};
    if (c == '{') Fail(line_, "inline tables are not supported");
    size_t start = i_;
    while (i_ < s_.size() && s_[i_] != ',' && s_[i_] != ']' && s_[i_] != '#' && s_[i_] != ' ' &&
           s_[i_] != '\t') {
      ++i_;
    }
    std::string word = s_.substr(start, i_ - start);
    if (word.empty()) Fail(line_, "expected a value");
    if (word == "true" || word == "false") return {word};
    // Integers and floats: digits, sign, '.', exponent and '_' separators.
    std::string number;
    bool ok = true;
    for (char ch : word) {
      if (ch == '_') continue;
      if (!(std::isdigit(static_cast<unsigned char>(ch)) || ch == '+' || ch == '-' || ch == '.' ||
            ch == 'e' || ch == 'E')) {
        ok = false;
        break;
      }
      number.push_back(ch);
    }
    if (!ok || number.empty() || !std::isdigit(static_cast<unsigned char>(number.back()))) {
      Fail(line_, "\"" + word +
                      "\" is not a TOML value (quote strings: key = \"text\"; dates are not "
                      "supported)");
    }
    if (number.front() == '+') number.erase(0, 1);
    return {number};
  }

 private:
  std::string String() {
    char quote = s_[i_++];
    if (s_.compare(i_, 2, std::string(2, quote)) == 0) {
      Fail(line_, "multi-line strings are not supported");
    }
    std::string out;
    while (true) {
      if (i_ >= s_.size()) Fail(line_, "unterminated string");
      char c = s_[i_++];
      if (c == quote) return out;
      if (c != '\\' || quote == '\'') {
        out.push_back(c);
        continue;
      }
      if (i_ >= s_.size()) Fail(line_, "unterminated string");
      char e = s_[i_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case 'n': out.push_back('\n'); break;
        case 't': out.push_back('\t'); break;
        case 'r': out.push_back('\r'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'u':
        case 'U': {
          size_t n = e == 'u' ? 4 : 8;
          if (i_ + n > s_.size()) Fail(line_, "bad \\" + std::string(1, e) + " escape");
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            char h = s_[i_++];
            if (!std::isxdigit(static_cast<unsigned char>(h))) Fail(line_, "bad unicode escape");
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                     ? h - '0'
                                                     : std::tolower(h) - 'a' + 10);
          }
          if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) Fail(line_, "bad unicode escape");
          AppendUtf8(cp, &out);
          break;
        }
        default:
          Fail(line_, "unknown escape \\" + std::string(1, e) + " in a string");
      }
    }
  }

  const std::string& s_;
  size_t i_ = 0;
  const int line_;
};

std::string Canonical(std::string key) {
  for (char& c : key) {
    if (c == '_') c = '-';
  }
  return key;
}

bool IsSecret(const std::string& name) {
  // A file or path option names where a secret is, not the secret.
  for (const char* suffix : {"-file", "-path", "-dir"}) {
    const std::string sfx = suffix;
    if (name.size() > sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0) {
      return false;
    }
  }
  for (const char* word : {"token", "secret", "password"}) {
    if (name.find(word) != std::string::npos) return true;
  }
  return false;
}

// Reads config files for CLI11: ParseToml, then a check that every key names
// a configurable option, then the environment layer (a key whose variable is
// set is dropped, so CLI11's environment pass sets it instead).
class TomlFormatter : public CLI::Config {
 public:
  TomlFormatter(const CLI::App* app, std::string env_prefix)
      : app_(app), env_prefix_(std::move(env_prefix)) {}

  std::string to_config(const CLI::App*, bool, bool, std::string) const override {
    return "";  // ConfigLayers::Render writes config files.
  }

  std::vector<CLI::ConfigItem> from_config(std::istream& in) const override {
    std::vector<CLI::ConfigItem> items;
    for (auto& e : ConfigLayers::ParseToml(in)) {
      const CLI::Option* opt = app_->get_option_no_throw("--" + e.key);
      if (opt == nullptr) {
        Fail(e.line, "unknown key \"" + e.key + "\" (keys are the long flag names without the "
                     "leading dashes; see --help or --print-config)");
      }
      if (!opt->get_configurable()) {
        Fail(e.line, "\"" + e.key + "\" cannot be set in a config file");
      }
      const char* env = std::getenv(ConfigLayers::EnvName(env_prefix_, e.key).c_str());
      if (env != nullptr && *env != '\0') continue;
      CLI::ConfigItem item;
      item.name = e.key;
      item.inputs = std::move(e.values);
      items.push_back(std::move(item));
    }
    return items;
  }

 private:
  const CLI::App* const app_;
  const std::string env_prefix_;
};

}  // namespace

std::string ConfigLayers::EnvName(const std::string& prefix, const std::string& long_name) {
  std::string out = prefix;
  for (char c : long_name) {
    out.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return out;
}

std::vector<ConfigLayers::Entry> ConfigLayers::ParseToml(std::istream& in) {
  std::vector<Entry> entries;
  std::map<std::string, int> seen;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    LineParser p(text, line);
    if (p.AtEndOrComment()) continue;
    if (p.Peek() == '[') {
      Fail(line, "tables ([section]) are not supported; every key is top-level");
    }
    Entry e;
    e.line = line;
    e.key = Canonical(p.Key());
    p.SkipSpace();
    if (!p.Eat('=')) Fail(line, "expected '=' after \"" + e.key + "\"");
    e.values = p.Value(true);
    if (!p.AtEndOrComment()) Fail(line, "unexpected text after the value of \"" + e.key + "\"");
    auto [it, inserted] = seen.emplace(e.key, line);
    if (!inserted) {
      Fail(line, "\"" + e.key + "\" is already set on line " + std::to_string(it->second));
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

std::string ConfigLayers::TomlValue(const std::string& value) {
  if (value == "true" || value == "false") return value;
  bool number = !value.empty() && value.size() < 19;
  for (size_t i = 0; i < value.size() && number; ++i) {
    number = std::isdigit(static_cast<unsigned char>(value[i])) || (i == 0 && value[i] == '-' &&
                                                                    value.size() > 1);
  }
  // TOML forbids leading zeros ("007"); those stay strings.
  if (number && value.size() > 1 && (value[0] == '0' || value.compare(0, 2, "-0") == 0)) {
    number = false;
  }
  if (number) return value;
  std::string out = "\"";
  for (unsigned char c : value) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04X", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

ConfigLayers::ConfigLayers(CLI::App& app, std::string env_prefix)
    : app_(app), env_prefix_(std::move(env_prefix)) {
  config_ = app_.set_config("--config", "",
                            "read options from this TOML file (keys are the long flag names:\n"
                            "listen = \"127.0.0.1:7600\");\n" +
                                EnvName(env_prefix_, "<FLAG>") +
                                " environment variables override it, flags override both");
  config_->envname(EnvName(env_prefix_, "config"));
  print_ = app_.add_flag("--print-config",
                         "print the effective configuration (file, environment and flags\n"
                         "applied) as a config file, and exit");
  print_->configurable(false);
  app_.config_formatter(std::make_shared<TomlFormatter>(&app_, env_prefix_));
  // Options may still be added after this object (by any code); they are
  // set up when parsing starts.
  app_.preparse_callback([this](size_t) { Prepare(); });
}

void ConfigLayers::Prepare() {
  for (CLI::Option* opt : app_.get_options()) {
    if (opt->get_lnames().empty() || !opt->get_configurable()) continue;
    // What Render shows for an option that was not given.
    opt->capture_default_str();
    opt->envname(EnvName(env_prefix_, opt->get_lnames().front()));
  }
  // CLI11 reads the file before the environment, so the file's own variable
  // is looked up here.
  if (const char* env = std::getenv(EnvName(env_prefix_, "config").c_str());
      env != nullptr && *env != '\0' && config_->count() == 0) {
    config_->default_str(env)->required();
  }
}

bool ConfigLayers::print_requested() const { return print_->count() > 0; }

std::vector<const CLI::Option*> ConfigLayers::Configurable() const {
  std::vector<const CLI::Option*> out;
  for (const CLI::Option* opt : app_.get_options()) {
    if (opt->get_lnames().empty() || !opt->get_configurable()) continue;
    out.push_back(opt);
  }
  return out;
}

std::vector<std::string> ConfigLayers::Values(const CLI::Option* opt) const {
  if (opt->get_expected_min() == 0) {  // a flag
    bool on = false;
    try {
      on = opt->count() > 0 ? opt->as<bool>() : CLI::detail::to_flag_value(opt->get_default_str()) > 0;
    } catch (...) {
    }
    return {on ? "true" : "false"};
  }
  if (opt->count() > 0) return opt->results();
  return {opt->get_default_str()};
}

std::string ConfigLayers::Render() const {
  std::ostringstream out;
  std::string app_name = app_.get_name();
  app_name = app_name.substr(app_name.find_last_of('/') + 1);
  out << "# " << (app_name.empty() ? "" : app_name + " ") << "configuration (TOML). Precedence: flags, then "
      << EnvName(env_prefix_, "<FLAG>") << "\n# environment variables, then this file.\n";
  for (const CLI::Option* opt : Configurable()) {
    const std::string& name = opt->get_lnames().front();
    out << "\n";
    std::istringstream help(opt->get_description());
    for (std::string l; std::getline(help, l);) out << "# " << l << "\n";
    out << "# env: " << EnvName(env_prefix_, name) << "\n";
    auto values = Values(opt);
    out << name << " = ";
    if (values.size() == 1 && opt->get_expected_max() <= 1) {
      out << TomlValue(values.front());
    } else {
      out << "[";
      for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << TomlValue(values[i]);
      out << "]";
    }
    out << "\n";
  }
  return out.str();
}

std::string ConfigLayers::Summary() const {
  std::string out;
  for (const CLI::Option* opt : Configurable()) {
    const std::string& name = opt->get_lnames().front();
    auto values = Values(opt);
    std::string v;
    for (size_t i = 0; i < values.size(); ++i) v += (i ? "," : "") + values[i];
    if (IsSecret(name) && !v.empty()) v = "<redacted>";
    if (!out.empty()) out += ' ';
    out += name + "=" + TomlValue(v);
  }
  return out;
}

}  // namespace errand
