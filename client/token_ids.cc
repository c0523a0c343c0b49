#include "client/token_ids.h"

#include <fstream>
#include <limits>

namespace seer {
namespace {

bool IsSeparator(char c) { return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

StatusOr<std::vector<int32_t>> ParseList(const std::string& text, const std::string& flag_name,
                                         const std::string& source) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    if (IsSeparator(text[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && !IsSeparator(text[j])) ++j;
    const std::string item = text.substr(i, j - i);
    bool digits = item.size() <= 10;
    for (char c : item) digits = digits && c >= '0' && c <= '9';
    const int64_t value = digits ? std::stoll(item) : -1;
    if (!digits || value > std::numeric_limits<int32_t>::max()) {
      return InvalidArgument(flag_name + ": item " + std::to_string(ids.size()) + " ('" + item.substr(0, 32) +
                             "') of " + source + " is not a token id (a non-negative 32-bit integer)");
    }
    ids.push_back(static_cast<int32_t>(value));
    i = j;
  }
  return ids;
}

}  // namespace

StatusOr<std::vector<int32_t>> ParseTokenIds(const std::string& value, const std::string& flag_name) {
  if (value.empty() || value[0] != '@') return ParseList(value, flag_name, "the list");
  const std::string path = value.substr(1);
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgument(flag_name + ": cannot open '" + path + "'");
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxTokenIdsFileBytes) {
      return InvalidArgument(flag_name + ": '" + path + "' is larger than " +
                             std::to_string(kMaxTokenIdsFileBytes >> 20) + " MiB");
    }
  }
  return ParseList(text, flag_name, "'" + path + "'");
}

}  // namespace seer
