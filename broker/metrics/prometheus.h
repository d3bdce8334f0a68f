#pragma once

#include <string>
#include <utility>
#include <vector>

#include "metrics/histogram.h"

namespace errand::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Writes the Prometheus text exposition format (version 0.0.4): each family
// once, as `# HELP`, `# TYPE`, then its samples. Label values are escaped;
// names are the caller's constants.
//
// Thread: one thread at a time.
class TextWriter {
 public:
  // The Content-Type of what Take() returns.
  static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

  // Starts a family; `type` is "counter", "gauge" or "histogram".
  void Family(const std::string& name, const std::string& help, const std::string& type);
  void Sample(const std::string& name, const Labels& labels, double value);
  // A whole histogram family sample set (_bucket, _sum, _count) for `labels`.
  void HistogramSamples(const std::string& name, const Labels& labels,
                        const Histogram::Snapshot& h);
  // Family + one sample, for the common single-series case.
  void Gauge(const std::string& name, const std::string& help, double value);
  void Counter(const std::string& name, const std::string& help, double value);

  std::string Take() { return std::move(out_); }

  // `v` escaped for a label value (backslash, double quote, newline).
  static std::string EscapeLabelValue(const std::string& v);
  // `v` as the format wants: integers without exponent, +Inf, -Inf, NaN.
  static std::string FormatValue(double v);

 private:
  std::string out_;
};

}  // namespace errand::metrics
