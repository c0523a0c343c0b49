// Small text helpers for messages: a value in quotes, a byte count, a number
// as written.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace seer {

// 'text', as error messages quote user input.
std::string Quoted(std::string_view s);

// "512 B", "3.5 MiB", "17.17 GiB".
std::string FormatBytes(size_t bytes);

// The shortest fixed-notation text that reads back as `v` ("0.002", "1").
std::string ShortestDouble(double v);

}  // namespace seer
