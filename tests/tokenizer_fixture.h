// The tokenizers of tests/fixtures/tokenizers/<family>, for the text tests.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "text/tokenizer.h"

namespace seer::testing {

// The family's tokenizer; null, with a test failure, when it does not load.
inline std::unique_ptr<Tokenizer> LoadFixtureTokenizer(const std::string& family) {
  auto t = Tokenizer::Load(std::string(SEER_FIXTURES_DIR) + "/tokenizers/" + family);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

}  // namespace seer::testing
