#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

namespace errand {

// Config file and environment layers over a CLI11 command line, for every
// option of the app, including options added later by anyone: nothing here
// names a flag.
//
// Once installed on an app whose options are all added, each option
// `--some-flag` may also be given
//   - in a config file (`--config FILE`, or the file named by
//     `$<PREFIX>CONFIG`) as the top-level TOML key `some-flag` (or
//     `some_flag`), and
//   - in the environment as `<PREFIX>SOME_FLAG` (an empty value is ignored).
// A flag on the command line beats the environment, which beats the file,
// which beats the built-in default. A key that names no option is an error
// that names the key and its line; so is TOML this reader does not take
// (tables, multi-line strings, dates).
//
// `--print-config` asks for the effective configuration, written by Render()
// as a config file that Install's reader takes back unchanged.
//
// Thread: one thread, at startup.
class ConfigLayers {
 public:
  // Adds --config and --print-config to `app`. When parsing starts, every
  // option then present (added before or after this object) gets its
  // environment variable (shown by --help) and its default captured for
  // Render(). REQUIRES: `app` outlives this object and has no other
  // preparse callback.
  ConfigLayers(CLI::App& app, std::string env_prefix);
  ConfigLayers(const ConfigLayers&) = delete;
  ConfigLayers& operator=(const ConfigLayers&) = delete;

  // After parse: --print-config was given.
  bool print_requested() const;

  // After parse: the effective configuration as a TOML config file, every
  // option in the order it was added, each preceded by its help text and
  // environment variable as comments.
  std::string Render() const;

  // After parse: the effective configuration on one line ("key=value ..."),
  // for the startup log. Values of options whose name says they are secret
  // (token, secret, password) are replaced by "<redacted>".
  std::string Summary() const;

  // The environment variable of option `long_name` ("data-dir" ->
  // "<PREFIX>DATA_DIR").
  static std::string EnvName(const std::string& prefix, const std::string& long_name);

  // One key of a config file: the canonical option name (dashes), its values
  // as text, and the line it is on.
  struct Entry {
    std::string key;
    std::vector<std::string> values;
    int line = 0;
  };
  // Parses the TOML subset config files may use: comments, top-level
  // `key = value` pairs whose value is a string (basic or literal), an
  // integer, a float, a boolean, or a one-line array of those. Throws
  // CLI::ConfigError naming the line for anything else, and for a key given
  // twice.
  static std::vector<Entry> ParseToml(std::istream& in);
  // Quotes `value` as a TOML value: bare when it is a decimal number or a
  // boolean, otherwise a basic string with escapes.
  static std::string TomlValue(const std::string& value);

 private:
  void Prepare();
  std::vector<const CLI::Option*> Configurable() const;
  std::vector<std::string> Values(const CLI::Option* opt) const;

  CLI::App& app_;
  const std::string env_prefix_;
  CLI::Option* config_ = nullptr;
  CLI::Option* print_ = nullptr;
};

}  // namespace errand
