#include "config_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/test_support.h"

namespace errand {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Environment variables set for one test and removed after it.
class ScopedEnv {
 public:
  ScopedEnv(const std::string& name, const std::string& value) : name_(name) {
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() { ::unsetenv(name_.c_str()); }

 private:
  std::string name_;
};

// A small app standing in for the broker's: options of the kinds it has, and
// one added "later" without capture_default_str, like a flag from elsewhere.
struct TestApp {
  CLI::App app{"test app"};
  std::string listen = "127.0.0.1:7600";
  std::string data_dir = "errand-data";
  int64_t sync_interval = 100;
  std::string commit = "sync";
  std::string port_file;
  std::string token;
  std::string token_file = "tokens.conf";
  bool verbose = false;
  uint32_t added_later = 7;
  std::unique_ptr<ConfigLayers> layers;

  TestApp() {
    app.add_option("--listen", listen, "gRPC address")->capture_default_str();
    app.add_option("--data-dir", data_dir, "data directory")->capture_default_str();
    app.add_option("--sync-interval", sync_interval, "ms")->capture_default_str();
    app.add_option("--commit", commit, "sync or async")
        ->check(CLI::IsMember({"sync", "async"}))
        ->capture_default_str();
    app.add_option("--port-file", port_file, "port file");
    app.add_option("--admin-token", token, "a secret");
    app.add_option("--token-file", token_file, "where tokens are");
    app.add_flag("--verbose", verbose, "more output");
    app.add_option("--added-later", added_later, "no captured default");
    layers = std::make_unique<ConfigLayers>(app, "ERRANDTEST_");
  }

  // Parses `args` (without argv[0]); returns CLI11's error text, "" when ok.
  std::string Parse(std::vector<std::string> args) {
    std::vector<const char*> argv = {"errand-broker"};
    for (auto& a : args) argv.push_back(a.c_str());
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
      return e.what();
    }
    return "";
  }
};

std::string WriteFile(const std::string& dir, const std::string& text) {
  std::string path = dir + "/errand.toml";
  std::ofstream(path) << text;
  return path;
}

TEST(ConfigLayersTest, EnvNameIsPrefixPlusUpperSnake) {
  EXPECT_EQ(ConfigLayers::EnvName("ERRAND_", "data-dir"), "ERRAND_DATA_DIR");
  EXPECT_EQ(ConfigLayers::EnvName("ERRAND_", "listen"), "ERRAND_LISTEN");
  EXPECT_EQ(ConfigLayers::EnvName("ERRAND_", "max-payload-bytes"), "ERRAND_MAX_PAYLOAD_BYTES");
}

TEST(ConfigLayersTest, DefaultsApplyWithoutFileOrEnvironment) {
  TestApp t;
  ASSERT_EQ(t.Parse({}), "");
  EXPECT_EQ(t.listen, "127.0.0.1:7600");
  EXPECT_EQ(t.sync_interval, 100);
  EXPECT_FALSE(t.layers->print_requested());
}

TEST(ConfigLayersTest, FileThenEnvironmentThenFlag) {
  testing::TempDir dir;
  std::string path = WriteFile(dir.path(),
                               "# comment\n"
                               "listen = \"127.0.0.1:1111\"   # trailing comment\n"
                               "data-dir = 'from-file'\n"
                               "sync_interval = 200\n"
                               "commit = \"async\"\n");
  ScopedEnv env_listen("ERRANDTEST_LISTEN", "127.0.0.1:2222");
  ScopedEnv env_dir("ERRANDTEST_DATA_DIR", "from-env");
  TestApp t;
  ASSERT_EQ(t.Parse({"--config", path, "--data-dir", "from-flag"}), "");
  EXPECT_EQ(t.listen, "127.0.0.1:2222");  // env beats file
  EXPECT_EQ(t.data_dir, "from-flag");     // flag beats env and file
  EXPECT_EQ(t.sync_interval, 200);        // file beats default
  EXPECT_EQ(t.commit, "async");
}

TEST(ConfigLayersTest, EnvironmentAppliesWithoutAFile) {
  ScopedEnv env("ERRANDTEST_SYNC_INTERVAL", "300");
  ScopedEnv flag("ERRANDTEST_VERBOSE", "true");
  TestApp t;
  ASSERT_EQ(t.Parse({}), "");
  EXPECT_EQ(t.sync_interval, 300);
  EXPECT_TRUE(t.verbose);
}

TEST(ConfigLayersTest, ConfigFileCanBeNamedByTheEnvironment) {
  testing::TempDir dir;
  std::string path = WriteFile(dir.path(), "sync-interval = 42\n");
  ScopedEnv env("ERRANDTEST_CONFIG", path);
  TestApp t;
  ASSERT_EQ(t.Parse({}), "");
  EXPECT_EQ(t.sync_interval, 42);
}

TEST(ConfigLayersTest, MissingConfigFileIsAnError) {
  testing::TempDir dir;
  TestApp t;
  EXPECT_THAT(t.Parse({"--config", dir.path() + "/nope.toml"}), HasSubstr("nope.toml"));
}

TEST(ConfigLayersTest, UnknownKeyIsAnErrorNamingIt) {
  testing::TempDir dir;
  std::string path = WriteFile(dir.path(), "listen = \"x:1\"\n\nlisten-addr = \"x:2\"\n");
  TestApp t;
  std::string err = t.Parse({"--config", path});
  EXPECT_THAT(err, HasSubstr("unknown key \"listen-addr\""));
  EXPECT_THAT(err, HasSubstr("line 3"));
}

TEST(ConfigLayersTest, NonConfigurableAndMalformedLinesAreErrors) {
  testing::TempDir dir;
  struct Case {
    std::string text, error;
  } cases[] = {
      {"print-config = true\n", "\"print-config\" cannot be set in a config file"},
      {"[broker]\nlisten = \"a\"\n", "tables ([section]) are not supported"},
      {"listen = 127.0.0.1:1\n", "is not a TOML value"},
      {"listen = \"open\n", "unterminated string"},
      {"listen\n", "expected '='"},
      {"listen = \"a\" \"b\"\n", "unexpected text"},
      {"listen = \"a\"\nlisten = \"b\"\n", "already set on line 1"},
      {"broker.listen = \"a\"\n", "dotted keys"},
      {"listen = \"\"\"a\"\"\"\n", "multi-line strings"},
  };
  for (const auto& c : cases) {
    std::string path = WriteFile(dir.path(), c.text);
    TestApp t;
    EXPECT_THAT(t.Parse({"--config", path}), HasSubstr(c.error)) << c.text;
  }
}

TEST(ConfigLayersTest, BadValueFromTheFileNamesTheOption) {
  testing::TempDir dir;
  std::string path = WriteFile(dir.path(), "commit = \"sometimes\"\n");
  TestApp t;
  EXPECT_THAT(t.Parse({"--config", path}), HasSubstr("--commit"));
}

TEST(ConfigLayersTest, ParseTomlReadsStringsNumbersBooleansAndArrays) {
  std::istringstream in(
      "a = \"q\\\"uote\\\\ \\u00e9 # not a comment\"\n"
      "b = 'C:\\path'\n"
      "c = 1_000\n"
      "d = -5\n"
      "e = true\n"
      "f = [\"x\", 'y', 3,]\n"
      "g = 1.5\n");
  auto entries = ConfigLayers::ParseToml(in);
  ASSERT_EQ(entries.size(), 7u);
  EXPECT_THAT(entries[0].values, ElementsAre("q\"uote\\ \xc3\xa9 # not a comment"));
  EXPECT_THAT(entries[1].values, ElementsAre("C:\\path"));
  EXPECT_THAT(entries[2].values, ElementsAre("1000"));
  EXPECT_THAT(entries[3].values, ElementsAre("-5"));
  EXPECT_THAT(entries[4].values, ElementsAre("true"));
  EXPECT_THAT(entries[5].values, ElementsAre("x", "y", "3"));
  EXPECT_THAT(entries[6].values, ElementsAre("1.5"));
  EXPECT_EQ(entries[6].line, 7);
}

TEST(ConfigLayersTest, TomlValueQuotesWhatIsNotANumberOrBoolean) {
  EXPECT_EQ(ConfigLayers::TomlValue("100"), "100");
  EXPECT_EQ(ConfigLayers::TomlValue("-3"), "-3");
  EXPECT_EQ(ConfigLayers::TomlValue("true"), "true");
  EXPECT_EQ(ConfigLayers::TomlValue("007"), "\"007\"");
  EXPECT_EQ(ConfigLayers::TomlValue("30s"), "\"30s\"");
  EXPECT_EQ(ConfigLayers::TomlValue(""), "\"\"");
  EXPECT_EQ(ConfigLayers::TomlValue("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
}

TEST(ConfigLayersTest, RenderShowsEveryOptionAndRoundTrips) {
  testing::TempDir dir;
  std::string rendered;
  {
    ScopedEnv env("ERRANDTEST_DATA_DIR", "dir with \"quotes\" # and hash");
    TestApp t;
    ASSERT_EQ(t.Parse({"--commit=async", "--verbose", "--admin-token", "s3cret"}), "");
    rendered = t.layers->Render();
    EXPECT_THAT(rendered, HasSubstr("\nlisten = \"127.0.0.1:7600\"\n"));
    EXPECT_THAT(rendered, HasSubstr("\ncommit = \"async\"\n"));
    EXPECT_THAT(rendered, HasSubstr("\nsync-interval = 100\n"));
    EXPECT_THAT(rendered, HasSubstr("\nport-file = \"\"\n"));
    EXPECT_THAT(rendered, HasSubstr("\nverbose = true\n"));
    EXPECT_THAT(rendered, HasSubstr("\nadded-later = 7\n"));
    EXPECT_THAT(rendered, HasSubstr("# env: ERRANDTEST_SYNC_INTERVAL\n"));
    EXPECT_THAT(rendered, ::testing::Not(HasSubstr("print-config =")));
    // The one-line summary for logs hides secrets.
    std::string summary = t.layers->Summary();
    EXPECT_THAT(summary, HasSubstr("admin-token=\"<redacted>\""));
    EXPECT_THAT(summary, ::testing::Not(HasSubstr("s3cret")));
    EXPECT_THAT(summary, HasSubstr("commit=\"async\""));
    // A path to a secret is not secret.
    EXPECT_THAT(summary, HasSubstr("token-file=\"tokens.conf\""));
  }
  std::string path = WriteFile(dir.path(), rendered);
  TestApp again;
  ASSERT_EQ(again.Parse({"--config", path}), "");
  EXPECT_EQ(again.data_dir, "dir with \"quotes\" # and hash");
  EXPECT_EQ(again.commit, "async");
  EXPECT_TRUE(again.verbose);
  EXPECT_EQ(again.token, "s3cret");
  EXPECT_EQ(again.added_later, 7u);
  EXPECT_EQ(again.layers->Render(), rendered);
}

}  // namespace
}  // namespace errand
