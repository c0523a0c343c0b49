// Small text helpers for messages: a value in quotes, a byte count, a number
// as written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace seer {

// 'text', as error messages quote user input.
std::string Quoted(std::string_view s);

// "512 B", "3.5 MiB", "17.17 GiB".
std::string FormatBytes(size_t bytes);

// A byte count as flags take it: an integer or decimal number and an
// optional unit, B, KiB/MiB/GiB/TiB (powers of 1024) or KB/MB/GB/TB (powers
// of 1000), e.g. "8GiB", "1.5 GB", "4096". INVALID_ARGUMENT naming `flag`.
StatusOr<int64_t> ParseByteSize(std::string_view text, std::string_view flag);

// The shortest fixed-notation text that reads back as `v` ("0.002", "1").
std::string ShortestDouble(double v);

}  // namespace seer
