#include "store/keys.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace errand::store {
namespace {

TEST(KeysTest, BE64RoundTrips) {
  const std::vector<uint64_t> values = {0,
                                        1,
                                        0xff,
                                        0x100,
                                        0x0123456789abcdefULL,
                                        0x8000000000000000ULL,
                                        UINT64_MAX - 1,
                                        UINT64_MAX};
  for (uint64_t v : values) {
    std::string s = EncodeBE64(v);
    ASSERT_EQ(s.size(), 8u) << v;
    EXPECT_EQ(DecodeBE64(s), v);
  }
}

TEST(KeysTest, BE64IsMostSignificantByteFirst) {
  EXPECT_EQ(EncodeBE64(0x0102030405060708ULL), std::string("\x01\x02\x03\x04\x05\x06\x07\x08"));
  EXPECT_EQ(EncodeBE64(0), std::string(8, '\0'));
}

TEST(KeysTest, BE64BytewiseOrderIsNumericOrder) {
  std::mt19937_64 rng(42);
  std::vector<uint64_t> values = {0, 1, 255, 256, 65535, 65536, UINT64_MAX, 1ULL << 63};
  for (int i = 0; i < 500; ++i) values.push_back(rng() >> (rng() % 64));
  for (size_t i = 0; i < values.size(); ++i) {
    for (size_t j = 0; j < values.size(); j += 7) {
      uint64_t a = values[i], b = values[j];
      // std::string compares as unsigned char, like RocksDB's bytewise comparator.
      int cmp = EncodeBE64(a).compare(EncodeBE64(b));
      EXPECT_EQ(cmp < 0, a < b) << a << " vs " << b;
      EXPECT_EQ(cmp == 0, a == b) << a << " vs " << b;
    }
  }
  // Sorting the encodings sorts the numbers.
  std::vector<std::string> encoded;
  for (uint64_t v : values) encoded.push_back(EncodeBE64(v));
  std::sort(encoded.begin(), encoded.end());
  std::sort(values.begin(), values.end());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(DecodeBE64(encoded[i]), values[i]);
}

TEST(KeysTest, FormatJobIdIsSixteenLowercaseHexDigits) {
  EXPECT_EQ(FormatJobId(1), "0000000000000001");
  EXPECT_EQ(FormatJobId(0x0123456789abcdefULL), "0123456789abcdef");
  EXPECT_EQ(FormatJobId(UINT64_MAX), "ffffffffffffffff");
}

TEST(KeysTest, FormatAndParseJobIdRoundTrip) {
  std::mt19937_64 rng(7);
  std::vector<uint64_t> ids = {1, 0xabcdef, 0x0123456789abcdefULL, UINT64_MAX};
  for (int i = 0; i < 200; ++i) ids.push_back(rng() | 1);
  for (uint64_t id : ids) {
    auto parsed = ParseJobId(FormatJobId(id));
    ASSERT_TRUE(parsed.has_value()) << id;
    EXPECT_EQ(*parsed, id);
  }
}

TEST(KeysTest, FormattedJobIdsSortLikeTheNumbers) {
  EXPECT_LT(FormatJobId(9), FormatJobId(10));
  EXPECT_LT(FormatJobId(0xf), FormatJobId(0x10));
  EXPECT_LT(FormatJobId(0x7fffffffffffffffULL), FormatJobId(0x8000000000000000ULL));
}

TEST(KeysTest, ParseJobIdRejectsWrongLength) {
  EXPECT_FALSE(ParseJobId("").has_value());
  EXPECT_FALSE(ParseJobId("1").has_value());
  EXPECT_FALSE(ParseJobId("000000000000001").has_value());    // 15
  EXPECT_FALSE(ParseJobId("00000000000000001").has_value());  // 17
}

TEST(KeysTest, ParseJobIdRejectsNonHex) {
  EXPECT_FALSE(ParseJobId("000000000000000g").has_value());
  EXPECT_FALSE(ParseJobId("00000000000000-1").has_value());
  EXPECT_FALSE(ParseJobId(" 000000000000001").has_value());
  EXPECT_FALSE(ParseJobId("0x00000000000001").has_value());
  EXPECT_FALSE(ParseJobId(std::string_view("000000000000000\0", 16)).has_value());
}

TEST(KeysTest, ParseJobIdRejectsZero) {
  EXPECT_FALSE(ParseJobId("0000000000000000").has_value());
}

TEST(KeysTest, ParseJobIdAcceptsUppercase) {
  auto parsed = ParseJobId("0123456789ABCDEF");
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(*parsed, 0x0123456789abcdefULL);
  auto mixed = ParseJobId("FfFfFfFfFfFfFfFf");
  ASSERT_TRUE(mixed.has_value());
  EXPECT_EQ(*mixed, UINT64_MAX);
}

}  // namespace
}  // namespace errand::store
