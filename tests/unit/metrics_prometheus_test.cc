#include "metrics/prometheus.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "metrics/histogram.h"

namespace errand::metrics {
namespace {

using ::testing::HasSubstr;

TEST(TextWriterTest, EscapesLabelValues) {
  EXPECT_EQ(TextWriter::EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(TextWriter::EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST(TextWriterTest, FormatsValues) {
  EXPECT_EQ(TextWriter::FormatValue(0), "0");
  EXPECT_EQ(TextWriter::FormatValue(42), "42");
  EXPECT_EQ(TextWriter::FormatValue(-3), "-3");
  EXPECT_EQ(TextWriter::FormatValue(12345678901234.0), "12345678901234");
  EXPECT_EQ(TextWriter::FormatValue(0.25), "0.25");
  EXPECT_EQ(TextWriter::FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(TextWriter::FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(TextWriter::FormatValue(std::nan("")), "NaN");
}

TEST(TextWriterTest, WritesFamiliesAndSamples) {
  TextWriter w;
  w.Family("errand_x_total", "Things.\nCounted \\ here.", "counter");
  w.Sample("errand_x_total", {{"queue", "q\"1"}, {"state", "ready"}}, 3);
  w.Gauge("errand_y", "Why.", 1.5);
  EXPECT_EQ(w.Take(),
            "# HELP errand_x_total Things.\\nCounted \\\\ here.\n"
            "# TYPE errand_x_total counter\n"
            "errand_x_total{queue=\"q\\\"1\",state=\"ready\"} 3\n"
            "# HELP errand_y Why.\n"
            "# TYPE errand_y gauge\n"
            "errand_y 1.5\n");
}

TEST(TextWriterTest, WritesCumulativeHistogramBuckets) {
  Histogram h({1, 2, 4});
  for (double v : {0.5, 1.0, 1.5, 3.0, 100.0}) h.Observe(v);
  TextWriter w;
  w.Family("errand_h_seconds", "H.", "histogram");
  w.HistogramSamples("errand_h_seconds", {{"cf", "jobs"}}, h.Read());
  EXPECT_EQ(w.Take(),
            "# HELP errand_h_seconds H.\n"
            "# TYPE errand_h_seconds histogram\n"
            "errand_h_seconds_bucket{cf=\"jobs\",le=\"1\"} 2\n"
            "errand_h_seconds_bucket{cf=\"jobs\",le=\"2\"} 3\n"
            "errand_h_seconds_bucket{cf=\"jobs\",le=\"4\"} 4\n"
            "errand_h_seconds_bucket{cf=\"jobs\",le=\"+Inf\"} 5\n"
            "errand_h_seconds_sum{cf=\"jobs\"} 106\n"
            "errand_h_seconds_count{cf=\"jobs\"} 5\n");
}

TEST(HistogramTest, BucketBoundsAreInclusiveAndSumAndCountAdd) {
  Histogram h({0.001, 0.01});
  h.Observe(0.001);
  h.Observe(0.002);
  h.Observe(5);
  auto s = h.Read();
  ASSERT_EQ(s.cumulative.size(), 3u);
  EXPECT_EQ(s.cumulative[0], 1u);
  EXPECT_EQ(s.cumulative[1], 2u);
  EXPECT_EQ(s.cumulative[2], 3u);
  EXPECT_EQ(s.count, 3u);
  EXPECT_DOUBLE_EQ(s.sum, 5.003);
}

TEST(HistogramTest, BoundHelpers) {
  EXPECT_EQ(Histogram::PowersOfTwo(8), (std::vector<double>{1, 2, 4, 8}));
  EXPECT_EQ(Histogram::Exponential(0.5, 2, 3), (std::vector<double>{0.5, 1, 2}));
}

}  // namespace
}  // namespace errand::metrics
