#pragma once

// TLS and bearer-token options shared by errand-worker and errandctl. Each
// flag also reads an environment variable, so a token need not appear in
// argv (where `ps` shows it): ERRAND_TOKEN or ERRAND_TOKEN_FILE.

#include <absl/status/status.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <string>

#include "errand/options.h"

namespace errand::tools {

struct SecurityFlags {
  bool tls = false;
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  std::string token, token_file;
};

inline void AddSecurityFlags(CLI::App& app, SecurityFlags* f) {
  app.add_flag("--tls", f->tls, "connect with TLS (implied by --tls-ca, --tls-cert)")
      ->envname("ERRAND_TLS");
  app.add_option("--tls-ca", f->tls_ca,
                 "PEM CA certificates that signed the broker's certificate (default: the\n"
                 "system's roots)")
      ->envname("ERRAND_TLS_CA");
  app.add_option("--tls-cert", f->tls_cert,
                 "PEM client certificate, for a broker that requires one (mutual TLS)")
      ->envname("ERRAND_TLS_CERT");
  app.add_option("--tls-key", f->tls_key, "PEM private key of --tls-cert")
      ->envname("ERRAND_TLS_KEY");
  app.add_option("--tls-server-name", f->tls_server_name,
                 "name to check the broker's certificate against (default: the host of --addr)")
      ->envname("ERRAND_TLS_SERVER_NAME");
  app.add_option("--token", f->token,
                 "bearer token for a broker with --token-file; prefer the environment\n"
                 "(ERRAND_TOKEN) or --token-file: argv is visible to every user of the machine")
      ->envname("ERRAND_TOKEN");
  app.add_option("--token-file", f->token_file,
                 "read the bearer token from the first line of this file (wins over --token)")
      ->envname("ERRAND_TOKEN_FILE");
}

// Copies the flags into `co`, reading --token-file (its first line).
inline absl::Status ApplySecurityFlags(const SecurityFlags& f, ClientOptions* co) {
  co->tls = f.tls;
  co->tls_ca_file = f.tls_ca;
  co->tls_cert_file = f.tls_cert;
  co->tls_key_file = f.tls_key;
  co->tls_server_name = f.tls_server_name;
  co->token = f.token;
  if (!f.token_file.empty()) {
    std::ifstream in(f.token_file);
    std::string line;
    if (!in || !std::getline(in, line)) {
      return absl::InvalidArgumentError("--token-file: cannot read " + f.token_file);
    }
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty()) return absl::InvalidArgumentError("--token-file: " + f.token_file +
                                                        " starts with an empty line");
    co->token = line;
  }
  return absl::OkStatus();
}

}  // namespace errand::tools
