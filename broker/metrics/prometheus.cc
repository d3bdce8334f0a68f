#include "metrics/prometheus.h"

#include <cmath>
#include <cstdio>

namespace errand::metrics {

std::string TextWriter::EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string TextWriter::FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.17g", v);
  }
  return buf;
}

void TextWriter::Family(const std::string& name, const std::string& help,
                        const std::string& type) {
  out_ += "# HELP " + name + " ";
  for (char c : help) {
    if (c == '\\') {
      out_ += "\\\\";
    } else if (c == '\n') {
      out_ += "\\n";
    } else {
      out_.push_back(c);
    }
  }
  out_ += "\n# TYPE " + name + " " + type + "\n";
}

void TextWriter::Sample(const std::string& name, const Labels& labels, double value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) out_ += ',';
      out_ += labels[i].first + "=\"" + EscapeLabelValue(labels[i].second) + "\"";
    }
    out_ += '}';
  }
  out_ += ' ' + FormatValue(value) + '\n';
}

void TextWriter::HistogramSamples(const std::string& name, const Labels& labels,
                                  const Histogram::Snapshot& h) {
  for (size_t i = 0; i <= h.bounds.size(); ++i) {
    Labels l = labels;
    l.emplace_back("le", i < h.bounds.size() ? FormatValue(h.bounds[i]) : "+Inf");
    Sample(name + "_bucket", l, static_cast<double>(h.cumulative[i]));
  }
  Sample(name + "_sum", labels, h.sum);
  Sample(name + "_count", labels, static_cast<double>(h.count));
}

void TextWriter::Gauge(const std::string& name, const std::string& help, double value) {
  Family(name, help, "gauge");
  Sample(name, {}, value);
}

void TextWriter::Counter(const std::string& name, const std::string& help, double value) {
  Family(name, help, "counter");
  Sample(name, {}, value);
}

}  // namespace errand::metrics
