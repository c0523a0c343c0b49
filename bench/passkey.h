// The passkey documents: the format of Mohtashami & Jaggi's landmark-attention
// test (used by LongLoRA and others). seer-quality-eval scores them, the
// bundled model's tests ask them, and tools/train_small_model.py (Python) and
// tools/demo.sh (bash) write the same text: keep them in step
// (bench/quality_eval_test.cc checks the Python one).
#pragma once

#include <cmath>
#include <string>

namespace seer::passkey {

inline constexpr char kIntro[] =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.";
inline constexpr char kFiller[] =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
inline constexpr char kQuestion[] = " What is the pass key? The pass key is";

inline std::string Line(const std::string& key) {
  return " The pass key is " + key + ". Remember it. " + key + " is the pass key.";
}

// The intro, `fillers` filler sentences with the key line before filler
// lround(depth * fillers) (after the last when that is `fillers`), then the
// question; the answer, " KEY.", follows it.
inline std::string Document(int fillers, double depth, const std::string& key) {
  const int before = static_cast<int>(std::lround(depth * fillers));
  std::string doc = kIntro;
  for (int i = 0; i < fillers; ++i) {
    if (i == before) doc += Line(key);
    doc += kFiller;
  }
  if (before >= fillers) doc += Line(key);
  return doc + kQuestion;
}

}  // namespace seer::passkey
