// The guide's allowed ids against the plain definition (each id's bytes
// read by a fresh copy of the grammar's matcher at the text so far), the
// vocabulary's bytes against the tokenizer's own decoding, and the sampler
// with a guide against the guide.
#include "text/guide.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <random>
#include <thread>

#include "base/json.h"
#include "kernels/sampling/sampler.h"
#include "text/gbnf_grammar.h"
#include "text/json_schema_grammar.h"
#include "text/text_test_util.h"

namespace seer {
namespace {

bool Bit(const std::vector<uint64_t>& bits, int32_t id) {
  return static_cast<size_t>(id) / 64 < bits.size() && ((bits[id / 64] >> (id % 64)) & 1) != 0;
}

// The ids whose bytes `at` reads whole: the definition, one id at a time.
std::vector<bool> AllowedByDefinition(const GrammarMatcher& at, const GuideVocabulary& v) {
  std::vector<bool> out(static_cast<size_t>(v.size()));
  for (int32_t id = 0; id < v.size(); ++id) {
    if (v.bytes(id).empty()) continue;
    GrammarMatcher m = at;
    out[id] = m.AdvanceText(v.bytes(id));
  }
  return out;
}

// A JSON-ish grammar by hand: value ::= "[" (value ("," value)*)? "]" | "\"" [^"]* "\"" | [0-9]+
Grammar NestedGrammar() {
  Grammar g;
  const int32_t value = g.AddRule("value");
  const int32_t more = g.Star("more", {Grammar::Byte(','), Grammar::Ref(value)});
  const int32_t items = g.RuleOf("items", {{Grammar::Ref(value), Grammar::Ref(more)}, {}});
  const int32_t chars = g.Star("chars", {Grammar::Ref(g.AddCodepoints("char", ComplementCodepoints({{'"', '"'}})))});
  const int32_t digits = g.Repeat("digits", {Grammar::Bytes(ByteSet::Range('0', '9'))}, 1, -1);
  g.AddAlternative(value, {Grammar::Byte('['), Grammar::Ref(items), Grammar::Byte(']')});
  g.AddAlternative(value, {Grammar::Byte('"'), Grammar::Ref(chars), Grammar::Byte('"')});
  g.AddAlternative(value, {Grammar::Ref(digits)});
  g.set_root(value);
  return g;
}

// Random byte strings from pieces that the grammars above care about,
// UTF-8 characters split over tokens included.
std::vector<std::optional<std::string>> RandomVocabulary(std::mt19937* rng, int size) {
  const std::vector<std::string> pieces = {"[", "]",    ",",    "\"",           "0",   "7", "a", "b",
                                           " ", "\xc3", "\xa9", "\xe4\xb8\xad", "yes", "no"};
  std::vector<std::optional<std::string>> bytes(static_cast<size_t>(size));
  for (int id = 0; id < size; ++id) {
    if (id % 17 == 0) continue;  // no text: a special token
    std::string s;
    const int n = 1 + static_cast<int>((*rng)() % 4);
    for (int k = 0; k < n; ++k) s += pieces[(*rng)() % pieces.size()];
    bytes[id] = s;
  }
  return bytes;
}

// One reply of random allowed ids, at most `max_steps`: at each step the
// guide's allowed ids and completeness against the definition. Returns the
// first disagreement ("" when none); adds the steps walked and ids allowed.
std::string WalkAgainstTheDefinition(TokenGuide& guide, const Grammar& grammar, const GuideVocabulary& vocabulary,
                                     std::mt19937* rng, int max_steps, int* steps, int* allowed_seen) {
  GrammarMatcher text(grammar);
  for (int step = 0; step < max_steps; ++step) {
    std::vector<uint64_t> bits;
    guide.Allowed(&bits);
    const std::vector<bool> expected = AllowedByDefinition(text, vocabulary);
    std::vector<int32_t> allowed;
    for (int32_t id = 0; id < vocabulary.size(); ++id) {
      if (Bit(bits, id) != expected[id]) {
        return "step " + std::to_string(step) + " id " + std::to_string(id) + " bytes " + vocabulary.bytes(id);
      }
      if (expected[id]) allowed.push_back(id);
    }
    if (guide.complete() != text.complete()) return "step " + std::to_string(step) + ": complete()";
    ++*steps;
    *allowed_seen += static_cast<int>(allowed.size());
    if (allowed.empty()) break;
    const int32_t pick = allowed[(*rng)() % allowed.size()];
    guide.Accept(pick);
    if (!text.AdvanceText(vocabulary.bytes(pick))) return "step " + std::to_string(step) + ": a refused id";
  }
  return "";
}

// The ids whose adjusted logit stays finite (zero logits in).
std::vector<int32_t> FiniteIds(Sampler& sampler, int32_t vocab) {
  const std::vector<float> adjusted = sampler.Adjusted(std::vector<float>(vocab, 0.0f));
  std::vector<int32_t> out;
  for (int32_t id = 0; id < vocab; ++id)
    if (std::isfinite(adjusted[id])) out.push_back(id);
  return out;
}

TEST(Guide, AllowedIdsAreThoseWhoseBytesTheGrammarReads) {
  std::mt19937 rng(7);
  std::vector<std::shared_ptr<const Grammar>> grammars;
  grammars.push_back(std::make_shared<Grammar>(NestedGrammar()));
  grammars.push_back(std::make_shared<Grammar>(*GrammarFromChoices({"yes", "no", "no way", "\xc3\xa9t\xc3\xa9"})));
  grammars.push_back(std::make_shared<Grammar>(JsonObjectGrammar()));
  int steps = 0, allowed_seen = 0;
  for (int trial = 0; trial < 60; ++trial) {
    auto vocabulary = GuideVocabulary::FromBytes(RandomVocabulary(&rng, 200 + trial * 7));
    const std::shared_ptr<const Grammar>& grammar = grammars[trial % grammars.size()];
    GrammarGuideFactory factory(grammar, vocabulary);
    std::unique_ptr<TokenGuide> guide = factory.Start();
    ASSERT_EQ(WalkAgainstTheDefinition(*guide, *grammar, *vocabulary, &rng, 40, &steps, &allowed_seen), "")
        << "trial " << trial;
  }
  EXPECT_GT(steps, 400);
  EXPECT_GT(allowed_seen, 2000);  // the walks did allow things
}

// The replies of one factory share its tables: four threads walk replies
// at once, and the tables start over every few states (max_states 6) or
// every 24 KB of them, yet every reply's allowed ids stay the
// definition's at every step.
TEST(Guide, RepliesShareTheTablesAcrossThreadsAndResets) {
  std::mt19937 vocab_rng(5);
  auto vocabulary = GuideVocabulary::FromBytes(RandomVocabulary(&vocab_rng, 300));
  auto grammar = std::make_shared<Grammar>(NestedGrammar());
  const std::pair<size_t, size_t> limits[] = {
      {6, GrammarGuideFactory::kDefaultMaxBytes},
      {GrammarGuideFactory::kDefaultMaxStates, 24 * 1024},
      {GrammarGuideFactory::kDefaultMaxStates, GrammarGuideFactory::kDefaultMaxBytes}};
  for (const auto& [max_states, max_bytes] : limits) {
    SCOPED_TRACE("max_states " + std::to_string(max_states) + ", max_bytes " + std::to_string(max_bytes));
    GrammarGuideFactory factory(grammar, vocabulary, max_states, max_bytes);
    std::atomic<int> mismatches{0}, steps{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(100 + t);
        for (int reply = 0; reply < 15; ++reply) {
          std::unique_ptr<TokenGuide> guide = factory.Start();
          int walked = 0, allowed_seen = 0;
          if (!WalkAgainstTheDefinition(*guide, *grammar, *vocabulary, &rng, 30, &walked, &allowed_seen).empty()) {
            ++mismatches;
          }
          steps += walked;
        }
      });
    }
    for (std::thread& th : threads) th.join();
    EXPECT_EQ(mismatches.load(), 0);
    EXPECT_GT(steps.load(), 500);
  }
}

TEST(Guide, AnIdTheGuideRefusedLeavesNothingAllowed) {
  auto vocabulary = GuideVocabulary::FromBytes({"y", "es", "n", "o", std::nullopt});
  GrammarGuideFactory factory(std::make_shared<Grammar>(*GrammarFromChoices({"yes", "no"})), vocabulary);
  std::unique_ptr<TokenGuide> guide = factory.Start();
  std::vector<uint64_t> bits;
  guide->Allowed(&bits);
  EXPECT_TRUE(Bit(bits, 0) && Bit(bits, 2) && !Bit(bits, 1) && !Bit(bits, 3) && !Bit(bits, 4));
  guide->Accept(3);  // "o": not allowed
  guide->Allowed(&bits);
  for (int32_t id = 0; id < 5; ++id) EXPECT_FALSE(Bit(bits, id));
  EXPECT_FALSE(guide->complete());
}

// A byte every way of which the matcher drops is allowed (the grammar may
// read it), and a reply that takes it fails, naming it.
TEST(Guide, ALostByteIsAllowedAndFailsTheReplyThatTakesIt) {
  Grammar g;
  int32_t deep = g.RuleOf("last", {Grammar::Text("a")});
  for (int i = 0; i < 300; ++i) deep = g.RuleOf("r" + std::to_string(i), {{Grammar::Ref(deep), Grammar::Byte('b')}});
  g.set_root(g.RuleOf("root", {{Grammar::Byte('y')}, {Grammar::Byte('x'), Grammar::Ref(deep)}}));
  auto vocabulary = GuideVocabulary::FromBytes({"x", "xa", "y", "z"});
  GrammarGuideFactory factory(std::make_shared<Grammar>(g), vocabulary);
  std::unique_ptr<TokenGuide> guide = factory.Start();
  std::vector<uint64_t> bits;
  guide->Allowed(&bits);
  EXPECT_TRUE(Bit(bits, 0) && Bit(bits, 1) && Bit(bits, 2) && !Bit(bits, 3));
  EXPECT_EQ(guide->failure(), "");
  guide->Accept(1);  // "xa"
  EXPECT_NE(guide->failure().find("past byte 0 of the reply"), std::string::npos) << guide->failure();
  std::unique_ptr<TokenGuide> fine = factory.Start();
  fine->Accept(2);  // "y"
  EXPECT_EQ(fine->failure(), "");
  EXPECT_TRUE(fine->complete());
}

// A walk of the vocabulary that alone would pass the tables' byte budget
// fails the reply (nothing allowed, the failure says why), and the tables
// start over: a reply of a factory with room walks as the definition says.
TEST(Guide, AWalkPastTheTablesBudgetFailsTheReply) {
  std::mt19937 rng(9);
  auto vocabulary = GuideVocabulary::FromBytes(RandomVocabulary(&rng, 300));
  auto grammar = std::make_shared<Grammar>(JsonObjectGrammar());
  SamplingParams params;
  params.vocab_size = vocabulary->size();
  params.guide =
      std::make_shared<GrammarGuideFactory>(grammar, vocabulary, GrammarGuideFactory::kDefaultMaxStates, 1024);
  Sampler sampler(params);
  EXPECT_EQ(sampler.GuideFailure(), "");
  const std::vector<float> adjusted = sampler.Adjusted(std::vector<float>(static_cast<size_t>(params.vocab_size), 0));
  for (float x : adjusted) EXPECT_FALSE(std::isfinite(x)) << "nothing is allowed";
  EXPECT_NE(
      sampler.GuideFailure().find("the guide's tables for the token after byte 0 of the reply would pass 1024 bytes"),
      std::string::npos)
      << sampler.GuideFailure();
  GrammarGuideFactory roomy(grammar, vocabulary);
  std::unique_ptr<TokenGuide> guide = roomy.Start();
  int steps = 0, allowed_seen = 0;
  EXPECT_EQ(WalkAgainstTheDefinition(*guide, *grammar, *vocabulary, &rng, 30, &steps, &allowed_seen), "");
  EXPECT_EQ(guide->failure(), "");
}

// A guide whose grammar loses ways of reading the reply says so, from the
// token that lost them on, naming the byte; until then it says nothing. The
// sampler passes it on.
TEST(Guide, AGuideThatLosesPartOfItsLanguageSaysWhere) {
  auto vocabulary = GuideVocabulary::FromBytes({"a", "aa", "b", "c"});
  StatusOr<Grammar> grammar = GrammarFromGbnf("root ::= s\ns ::= \"a\" s \"b\" | \"a\" s \"c\" | \"\"\n");
  ASSERT_TRUE(grammar.ok()) << grammar.status().ToString();
  auto factory = std::make_shared<GrammarGuideFactory>(std::make_shared<Grammar>(*grammar), vocabulary);
  SamplingParams params;
  params.vocab_size = 4;
  params.guide = factory;
  Sampler sampler(params);
  size_t bytes = 0;
  GrammarMatcher reference(*grammar);
  int first = -1;
  for (int step = 0; step < 8 && first < 0; ++step) {
    const int32_t token = 1;  // "aa"
    EXPECT_EQ(sampler.GuideFailure(), "") << step;
    sampler.Record(token);
    for (int k = 0; k < 2; ++k) {
      ASSERT_TRUE(reference.Advance('a'));
      if (reference.narrowed() && first < 0) first = static_cast<int>(bytes) + k;
    }
    bytes += 2;
    if (first >= 0) {
      const std::string failure = sampler.GuideFailure();
      EXPECT_NE(failure.find("past byte " + std::to_string(first) + " of the reply"), std::string::npos) << failure;
      EXPECT_NE(failure.find("more than 1024 ways"), std::string::npos) << failure;
    }
  }
  ASSERT_GE(first, 0) << "the grammar never narrowed";
  // Another reply of the same factory, through the tables the first one
  // filled, says the same.
  std::unique_ptr<TokenGuide> again = factory->Start();
  for (int step = 0; step * 2 <= first; ++step) {
    EXPECT_EQ(again->failure(), "");
    again->Accept(1);
  }
  EXPECT_EQ(again->failure(), sampler.GuideFailure());
}

// Each id's bytes, joined, are the tokenizer's decoding of the ids after
// any token (the vocabulary's anchor or not).
TEST(Guide, VocabularyBytesJoinToTheTokenizersDecoding) {
  for (const char* family : {"llama3", "llama2", "qwen2", "mistral", "gpt2"}) {
    SCOPED_TRACE(family);
    std::unique_ptr<Tokenizer> tok = text_test::LoadTokenizer(family);
    ASSERT_NE(tok, nullptr);
    auto vocabulary = GuideVocabulary::FromTokenizer(*tok);
    ASSERT_TRUE(vocabulary.ok()) << vocabulary.status().ToString();
    const GuideVocabulary& v = **vocabulary;
    ASSERT_EQ(v.size(), tok->vocab_size());
    std::vector<int32_t> text_ids;
    for (int32_t id = 0; id < v.size(); ++id) {
      if (!v.bytes(id).empty()) text_ids.push_back(id);
      if (tok->IsSpecial(id)) EXPECT_TRUE(v.bytes(id).empty()) << id;
    }
    ASSERT_GT(text_ids.size(), static_cast<size_t>(v.size()) * 9 / 10);
    std::mt19937 rng(11);
    const std::vector<int32_t> leads = *tok->Encode("Hello", /*add_special_tokens=*/false);
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<int32_t> ids = leads;
      std::string joined;
      for (int k = 0; k < 6; ++k) {
        const int32_t id = text_ids[rng() % text_ids.size()];
        ids.push_back(id);
        joined += v.bytes(id);
      }
      const std::vector<int32_t> lead_only = leads;
      const std::string lead = *tok->DecodeBytes(lead_only);
      const std::string all = *tok->DecodeBytes(ids);
      ASSERT_EQ(all, lead + joined) << "trial " << trial;
    }
  }
}

// Vocabulary: ids 0-9 are "0".."9", 10 "[", 11 "]", 12 ",", 13 "\"", 14 "a",
// 15 "ab", 16 the end of text (no bytes).
std::shared_ptr<const GuideVocabulary> SmallVocabulary() {
  std::vector<std::optional<std::string>> bytes;
  for (char c = '0'; c <= '9'; ++c) bytes.push_back(std::string(1, c));
  for (const char* s : {"[", "]", ",", "\"", "a", "ab"}) bytes.push_back(std::string(s));
  bytes.push_back(std::nullopt);
  return GuideVocabulary::FromBytes(bytes);
}
constexpr int32_t kEnd = 16;
constexpr int32_t kVocab = 20;  // the model's rows are wider than the tokenizer's

TEST(Guide, TheSamplerBansWhatTheGuideRefusesAndKeepsItsOtherAdjustments) {
  std::mt19937 rng(3);
  const Grammar grammar = NestedGrammar();
  auto vocabulary = SmallVocabulary();
  int steps = 0, ends = 0;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    SamplingParams p;
    p.temperature = 1.0;
    p.seed = seed;
    p.vocab_size = kVocab;
    p.end_ids = {kEnd};
    p.logit_bias = {{3, 1.5f}, {11, -0.5f}, {18, 2.0f}, {kEnd, -3.0f}};
    p.presence_penalty = 0.25;
    p.guide = std::make_shared<GrammarGuideFactory>(std::make_shared<Grammar>(grammar), vocabulary);
    SamplingParams plain = p;
    plain.guide = nullptr;
    Sampler guided(p), unguided(plain);
    GrammarMatcher text(grammar);
    for (int step = 0; step < 100; ++step, ++steps) {
      std::vector<float> logits(kVocab);
      for (float& x : logits) x = std::normal_distribution<float>(0.0f, 2.0f)(rng);
      const std::vector<float> got = guided.Adjusted(logits);
      const std::vector<float> base = unguided.Adjusted(logits);
      const std::vector<bool> allowed = AllowedByDefinition(text, *vocabulary);
      for (int32_t id = 0; id < kVocab; ++id) {
        const bool ok = (id < vocabulary->size() && allowed[id]) || (id == kEnd && text.complete());
        if (ok) {
          ASSERT_EQ(got[id], base[id]) << "seed " << seed << " step " << step << " id " << id;
        } else {
          ASSERT_EQ(got[id], -std::numeric_limits<float>::infinity())
              << "seed " << seed << " step " << step << " id " << id;
        }
      }
      const int32_t token = guided.Sample(logits);
      unguided.Record(token);
      if (token == kEnd) {
        EXPECT_TRUE(text.complete());
        ++ends;
        break;
      }
      ASSERT_TRUE(text.AdvanceText(vocabulary->bytes(token))) << "seed " << seed << " step " << step;
    }
  }
  EXPECT_GT(steps, 200);
  EXPECT_GT(ends, 10);
}

TEST(Guide, EndIdsComeOnlyWithAWholeTextAndAloneWhenNothingElseCan) {
  SamplingParams p;
  p.vocab_size = kVocab;
  p.end_ids = {kEnd};
  p.min_tokens = 5;  // the guide overrides it only when nothing else may come
  p.guide = std::make_shared<GrammarGuideFactory>(std::make_shared<Grammar>(*GrammarFromChoices({"a", "a0", "ab"})),
                                                  SmallVocabulary());
  Sampler s(p);
  auto finite = [](Sampler& sampler) { return FiniteIds(sampler, kVocab); };
  EXPECT_EQ(finite(s), (std::vector<int32_t>{14, 15}));
  s.Record(14);  // "a": whole, and "0" may follow, so min_tokens still bans the end
  EXPECT_EQ(finite(s), (std::vector<int32_t>{0}));
  s.Record(0);  // "a0": nothing may follow, so the end may come after all
  EXPECT_EQ(finite(s), (std::vector<int32_t>{kEnd}));
  Sampler again(p);
  again.Record(15);  // "ab"
  EXPECT_EQ(finite(again), (std::vector<int32_t>{kEnd}));
}

// An end id whose text the guide would take (a stop token "0") is refused
// while the text is not whole: it would end the reply there.
TEST(Guide, AnEndIdWithTextWaitsForAWholeText) {
  auto finite = [](Sampler& sampler) { return FiniteIds(sampler, kVocab); };
  SamplingParams p;
  p.vocab_size = kVocab;
  p.end_ids = {kEnd, 0};  // "0" stops the reply too
  auto vocabulary = SmallVocabulary();
  p.guide =
      std::make_shared<GrammarGuideFactory>(std::make_shared<Grammar>(*GrammarFromChoices({"a0a", "aa"})), vocabulary);
  Sampler open(p);
  open.Record(14);  // "a": "0" or "a" may follow, but "0" would end an unfinished text
  EXPECT_EQ(finite(open), (std::vector<int32_t>{14}));
  p.guide = std::make_shared<GrammarGuideFactory>(std::make_shared<Grammar>(*GrammarFromChoices({"a0a", "aa", "a"})),
                                                  vocabulary);
  Sampler whole(p);
  whole.Record(14);  // "a" is whole now: the end ids may come, "0" among them
  EXPECT_EQ(finite(whole), (std::vector<int32_t>{0, 14, kEnd}));
}

// The guide's bans and the sampler's own together can leave nothing: a
// bad word that is the only id the guide allows. The end ids are then
// allowed, so the reply ends instead of drawing a banned token.
TEST(Guide, WhenTheOtherBansLeaveNothingTheReplyEnds) {
  SamplingParams p;
  p.vocab_size = kVocab;
  p.end_ids = {kEnd};
  p.bad_words = {{14}};  // "a", the only way to start
  p.temperature = 1.0;
  p.guide =
      std::make_shared<GrammarGuideFactory>(std::make_shared<Grammar>(*GrammarFromChoices({"a0"})), SmallVocabulary());
  for (uint64_t seed = 0; seed < 5; ++seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<float> logits(kVocab, 0.0f);
    EXPECT_EQ(s.Sample(logits), kEnd);
  }
  p.bad_words.clear();
  p.allowed_ids = {0, 1, kEnd};  // allowed_token_ids without the guide's "a"
  Sampler s(p);
  EXPECT_EQ(s.Sample(std::vector<float>(kVocab, 0.0f)), kEnd);
}

// A guide of many alternatives (a GBNF list of 1,500 words, as one might
// list cities) keeps every one: CompileGuide factors the grammar, and
// unfactored the matcher's 1,024 ways would lose some.
TEST(Guide, CompileGuideKeepsEveryWordOfALongList) {
  GuideSpec spec;
  spec.kind = GuideSpec::Kind::kGrammar;
  spec.text = "root ::= \"city: \" city\ncity ::= \"c0\"";
  for (int i = 1; i < 1500; ++i) spec.text += " | \"c" + std::to_string(i) + "\"";
  StatusOr<std::shared_ptr<const Grammar>> grammar = CompileGuide(spec);
  ASSERT_TRUE(grammar.ok()) << grammar.status().ToString();
  for (int i = 0; i < 1500; ++i) ASSERT_TRUE(GrammarMatches(**grammar, "city: c" + std::to_string(i))) << i;
  EXPECT_FALSE(GrammarMatches(**grammar, "city: c1500"));
  StatusOr<Grammar> unfactored = GrammarFromGbnf(spec.text);
  ASSERT_TRUE(unfactored.ok());
  int lost = 0;
  for (int i = 0; i < 1500; ++i) lost += GrammarMatches(*unfactored, "city: c" + std::to_string(i)) ? 0 : 1;
  EXPECT_GT(lost, 0) << "the matcher's bound without factoring";
}

TEST(Guide, CompileGuideNamesTheField) {
  GuideSpec spec;
  spec.kind = GuideSpec::Kind::kJsonSchema;
  spec.text = "{not json";
  StatusOr<std::shared_ptr<const Grammar>> g = CompileGuide(spec);
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.status().message().find("guide.json_schema: not valid JSON"), std::string::npos) << g.status().message();
  spec.kind = GuideSpec::Kind::kRegex;
  spec.text = "(a";
  g = CompileGuide(spec);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().message().rfind("guide.regex: ", 0), 0u) << g.status().message();
  spec.kind = GuideSpec::Kind::kChoice;
  spec.choices.clear();
  g = CompileGuide(spec);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().message(), "guide.choice: needs at least one choice");
  spec.choices.assign(kMaxGuideChoices + 1, "x");
  EXPECT_FALSE(CompileGuide(spec).ok());
  spec.choices = {"yes", "no"};
  g = CompileGuide(spec);
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(GrammarMatches(**g, "no"));
  EXPECT_FALSE(GrammarMatches(**g, "n"));
}

}  // namespace
}  // namespace seer
