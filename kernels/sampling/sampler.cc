#include "kernels/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <thread>

namespace seer {

int32_t ArgMax(std::span<const float> values) {
  int32_t best = -1;
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) continue;
    if (best < 0 || values[i] > values[best]) best = static_cast<int32_t>(i);
  }
  return best < 0 ? 0 : best;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  penalised_ = params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
  repetition_ = static_cast<float>(params.repetition_penalty);
  // Every id that needs an entry, sorted once: a long prompt's ids, one
  // insertion at a time, would move the entries quadratically.
  std::vector<int32_t> ids;
  for (const LogitAdjustment& b : params.logit_bias)
    if (b.delta != 0.0f) ids.push_back(b.id);
  if (banning()) ids.insert(ids.end(), params.end_ids.begin(), params.end_ids.end());
  if (repetition_ != 1.0f) {
    for (int32_t id : params.prompt_ids)
      if (id >= 0) ids.push_back(id);
  }
  std::vector<int32_t> allowed = params.allowed_ids;
  std::sort(allowed.begin(), allowed.end());
  if (!allowed.empty()) {
    for (int32_t id = 0; id < params.vocab_size; ++id)
      if (!std::binary_search(allowed.begin(), allowed.end(), id)) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int32_t id : ids) adjustments_.push_back(LogitAdjustment{id, 0.0f});
  states_.assign(ids.size(), EntryState{});

  for (const LogitAdjustment& b : params.logit_bias) {
    if (b.delta == 0.0f) continue;
    states_[Find(b.id)].bias += b.delta;  // an id given twice adds, in double
  }
  if (banning()) {
    for (int32_t id : params.end_ids) states_[Find(id)].ended = true;
  }
  if (repetition_ != 1.0f) {
    for (int32_t id : params.prompt_ids)
      if (id >= 0) adjustments_[Find(id)].repetition = repetition_;
  }
  if (!allowed.empty()) {
    for (size_t i = 0; i < adjustments_.size(); ++i) {
      states_[i].outside = !std::binary_search(allowed.begin(), allowed.end(), adjustments_[i].id);
    }
  }
  for (size_t i = 0; i < adjustments_.size(); ++i) adjustments_[i].delta = Delta(i);
  // The entries hold the prompt's ids now; a long prompt's copy would only
  // take memory for the rest of the reply.
  std::vector<int32_t>().swap(params_.prompt_ids);
  for (const std::vector<int32_t>& w : params_.bad_words) bad_context_ = std::max(bad_context_, w.size());
  if (!params_.bad_words.empty()) Refresh();  // the one-token bad words
  if (params_.guide != nullptr) {
    guide_ = params_.guide->Start();
    guide_pending_ = true;
  }
}

size_t Sampler::Find(int32_t id) const {
  auto it = std::lower_bound(adjustments_.begin(), adjustments_.end(), id,
                             [](const LogitAdjustment& a, int32_t x) { return a.id < x; });
  return static_cast<size_t>(it - adjustments_.begin());
}

size_t Sampler::EntryFor(int32_t id) {
  const size_t i = Find(id);
  if (i == adjustments_.size() || adjustments_[i].id != id) {
    const auto at = static_cast<std::ptrdiff_t>(i);
    adjustments_.insert(adjustments_.begin() + at, LogitAdjustment{id, 0.0f});
    states_.insert(states_.begin() + at, EntryState{});
  }
  return i;
}

float Sampler::Delta(size_t i) const {
  const EntryState& e = states_[i];
  if ((e.ended && banning() && !guide_ends_) || e.bad || e.outside) {
    return -std::numeric_limits<float>::infinity();
  }
  if (e.count == 0) return static_cast<float>(e.bias);
  // In double, rounded once: every backend adds the same float.
  return static_cast<float>(e.bias -
                            (static_cast<double>(e.count) * params_.frequency_penalty + params_.presence_penalty));
}

void Sampler::Record(int32_t token) {
  const bool was_banning = banning();
  ++recorded_;
  if ((penalised_ || repetition_ != 1.0f) && token >= 0) {
    const size_t i = EntryFor(token);
    ++states_[i].count;
    adjustments_[i].delta = Delta(i);
    adjustments_[i].repetition = repetition_;
  }
  if (!params_.bad_words.empty()) {
    recent_.push_back(token);
    const size_t keep = bad_context_ > 0 ? bad_context_ - 1 : 0;
    if (recent_.size() > keep) recent_.erase(recent_.begin(), recent_.end() - static_cast<std::ptrdiff_t>(keep));
  }
  // The end ids are allowed from now on (back to their bias), or the bad
  // words' bans move.
  if ((was_banning && !banning()) || !params_.bad_words.empty()) Refresh();
  if (guide_ != nullptr) {
    guide_->Accept(token);
    guide_pending_ = true;
  }
}

void Sampler::Guide() {
  guide_->Allowed(&guide_allowed_);
  const size_t words = (static_cast<size_t>(params_.vocab_size) + 63) / 64;
  guide_allowed_.resize(words, 0);
  if (end_bits_.size() != words) {
    end_bits_.assign(words, 0);
    for (int32_t id : params_.end_ids) {
      if (id >= 0 && id < params_.vocab_size) end_bits_[id / 64] |= uint64_t{1} << (id % 64);
    }
  }
  // The vocabulary's bits of word w (the last one may be partial).
  auto in_vocab = [&](size_t w) {
    const int tail = params_.vocab_size % 64;
    return w + 1 == words && tail != 0 ? (uint64_t{1} << tail) - 1 : ~uint64_t{0};
  };
  // The ids the guide refuses: the end ids too, unless the reply may end here.
  auto refuse = [&](bool may_end) {
    refused_.resize(words);
    for (size_t w = 0; w < words; ++w) {
      const uint64_t refused = ~guide_allowed_[w];
      refused_[w] = (may_end ? refused & ~end_bits_[w] : refused | end_bits_[w]) & in_vocab(w);
    }
  };
  auto ends_override = [&](bool on) {
    if (guide_ends_ == on) return;
    guide_ends_ = on;  // the end ids' min_tokens ban moves
    for (size_t i = 0; i < adjustments_.size(); ++i) adjustments_[i].delta = Delta(i);
  };
  ends_override(false);
  refuse(guide_->complete());
  // Whether any id but the end ids is left, with the guide's bans and the
  // sampler's own (bad words, allowed_token_ids) together. If none is, the
  // reply ends here, min_tokens or not, rather than run on a banned token.
  auto bit = [](const std::vector<uint64_t>& bits, int32_t id) { return ((bits[id / 64] >> (id % 64)) & 1) != 0; };
  size_t left = 0;
  for (size_t w = 0; w < words; ++w) {
    left += static_cast<size_t>(__builtin_popcountll(~refused_[w] & ~end_bits_[w] & in_vocab(w)));
  }
  for (const LogitAdjustment& a : adjustments_) {
    if (a.id < 0 || a.id >= params_.vocab_size || bit(end_bits_, a.id) || bit(refused_, a.id)) continue;
    if (a.delta == -std::numeric_limits<float>::infinity()) --left;
  }
  if (left == 0) {
    ends_override(true);
    refuse(/*may_end=*/true);
  }
  guide_pending_ = false;
}

void Sampler::Refresh() {
  for (EntryState& e : states_) e.bad = false;
  for (const std::vector<int32_t>& w : params_.bad_words) {
    if (w.empty() || w.back() < 0) continue;
    const size_t rest = w.size() - 1;
    if (recent_.size() < rest || !std::equal(w.begin(), w.end() - 1, recent_.end() - static_cast<std::ptrdiff_t>(rest)))
      continue;
    states_[EntryFor(w.back())].bad = true;
  }
  // An entry stays while it adjusts something or counts a token.
  size_t kept = 0;
  for (size_t i = 0; i < adjustments_.size(); ++i) {
    const EntryState& e = states_[i];
    const bool needed = e.bias != 0.0 || e.count > 0 || (e.ended && banning()) || e.bad || e.outside ||
                        adjustments_[i].repetition != 1.0f;
    if (!needed) continue;
    adjustments_[kept] = adjustments_[i];
    states_[kept] = e;
    adjustments_[kept].delta = Delta(kept);
    ++kept;
  }
  adjustments_.resize(kept);
  states_.resize(kept);
}

std::vector<float> Sampler::Adjusted(std::span<const float> logits) {
  std::vector<float> out(logits.begin(), logits.end());
  for (const LogitAdjustment& a : Adjustments()) {
    if (static_cast<size_t>(a.id) < out.size()) out[a.id] = AdjustLogit(out[a.id], a.delta, a.repetition);
  }
  const std::span<const uint64_t> refused = Refused();
  for (size_t w = 0; w < refused.size(); ++w) {
    for (uint64_t bits = refused[w]; bits != 0; bits &= bits - 1) {
      const size_t id = w * 64 + static_cast<size_t>(__builtin_ctzll(bits));
      if (id < out.size()) out[id] = AdjustLogit(out[id], -std::numeric_limits<float>::infinity(), 1.0f);
    }
  }
  return out;
}

double Sampler::NextUniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

std::vector<double> Sampler::Distribution(std::span<const float> logits) {
  if (Adjustments().empty() && Refused().empty()) return DistributionOf(logits);
  const std::vector<float> adjusted = Adjusted(logits);
  return DistributionOf(adjusted);
}

int32_t Sampler::Sample(std::span<const float> logits) {
  int32_t token = 0;
  if (Adjustments().empty() && Refused().empty()) {
    token = Choose(logits);
  } else {
    const std::vector<float> adjusted = Adjusted(logits);
    token = Choose(adjusted);
  }
  Record(token);
  if (wants_logprobs()) last_logprobs_ = LogprobsOf(logits, token, params_.logprobs);
  return token;
}

TokenLogprobs LogprobsOf(std::span<const float> logits, int32_t token, int top_n) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const size_t vocab = logits.size();
  float max = -std::numeric_limits<float>::infinity();
  for (float v : logits)
    if (v > max) max = v;  // NaN compares false
  // log_z = log(sum exp(x)) over the non-NaN x, as max + log(sum exp(x -
  // max)): each term exp(x - max) <= 1 in float (to 2^-24 of itself, far
  // below the float the result is rounded to), summed in double. When some
  // logits are +inf they share all the mass.
  double log_z = kInf;
  if (std::isfinite(max)) {
    double sum = 0.0;
    for (float v : logits)
      if (!std::isnan(v)) sum += std::exp(v - max);
    log_z = static_cast<double>(max) + std::log(sum);
  } else if (max > 0.0f) {
    const auto inf = std::count(logits.begin(), logits.end(), std::numeric_limits<float>::infinity());
    log_z = std::log(static_cast<double>(inf));
  }
  auto logprob = [&](size_t i) -> float {
    const double v = logits[i];
    if (std::isnan(v) || log_z == kInf) return -std::numeric_limits<float>::infinity();
    if (max == std::numeric_limits<float>::infinity()) {
      return v == kInf ? static_cast<float>(-log_z) : -std::numeric_limits<float>::infinity();
    }
    return static_cast<float>(v - log_z);
  };
  TokenLogprobs out;
  out.chosen.id = token;
  out.chosen.logprob = token >= 0 && static_cast<size_t>(token) < vocab ? logprob(static_cast<size_t>(token))
                                                                        : -std::numeric_limits<float>::infinity();
  // The top_n in one pass: a list kept sorted, most likely first (the lower
  // id among equals, which the scan in id order gives by inserting after
  // equals).
  const size_t n = std::min(vocab, static_cast<size_t>(std::max(top_n, 0)));
  std::vector<int32_t> top;
  top.reserve(n + 1);
  for (size_t i = 0; i < vocab && n > 0; ++i) {
    const float v = logits[i];
    if (std::isnan(v)) continue;
    if (top.size() == n && !(v > logits[top.back()])) continue;
    auto at = std::upper_bound(top.begin(), top.end(), v, [&](float x, int32_t id) { return x > logits[id]; });
    top.insert(at, static_cast<int32_t>(i));
    if (top.size() > n) top.pop_back();
  }
  for (int32_t id : top) out.top.push_back(TokenLogprob{id, logprob(static_cast<size_t>(id))});
  return out;
}

std::vector<double> Sampler::DistributionOf(std::span<const float> logits) const {
  if (params_.temperature <= 0.0 || logits.empty()) return {};
  const size_t vocab = logits.size();

  // Candidates by descending logit, lowest id first among equals.
  std::vector<int32_t> order;
  order.reserve(vocab);
  for (size_t i = 0; i < vocab; ++i)
    if (!std::isnan(logits[i])) order.push_back(static_cast<int32_t>(i));
  if (order.empty()) return std::vector<double>(vocab, 0.0);
  auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const size_t keep_k = params_.top_k > 0 ? std::min(order.size(), static_cast<size_t>(params_.top_k)) : order.size();
  if (keep_k < order.size() || params_.top_p < 1.0 || params_.min_p > 0.0) {
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep_k), order.end(), before);
    order.resize(keep_k);
  }

  // Softmax in double over the kept candidates, shifted by the largest logit.
  double top = -INFINITY;
  for (int32_t i : order) top = std::max(top, static_cast<double>(logits[i]));
  std::vector<double> weight(order.size());
  double total = 0.0;
  for (size_t j = 0; j < order.size(); ++j) {
    const double l = logits[order[j]];
    // With an infinite maximum, the infinite logits share the mass.
    weight[j] = std::isinf(top) ? (l == top ? 1.0 : 0.0) : std::exp((l - top) / params_.temperature);
    total += weight[j];
  }

  // Min-p: the weights are the probabilities over the largest's (which is
  // 1), so the kept tokens, sorted, are the prefix of weights at least min_p.
  // vLLM cuts them before top-k; both cuts keep a prefix, so the order does
  // not change which tokens stay.
  size_t kept = order.size();
  if (params_.min_p > 0.0) {
    kept = 0;
    while (kept < order.size() && weight[kept] >= params_.min_p) ++kept;
    total = std::accumulate(weight.begin(), weight.begin() + static_cast<std::ptrdiff_t>(kept), 0.0);
  }

  // Nucleus: candidates are sorted when top_p < 1; keep the prefix whose mass
  // first reaches top_p.
  if (params_.top_p < 1.0) {
    double mass = 0.0;
    for (size_t j = 0; j < kept; ++j) {
      mass += weight[j] / total;
      if (mass >= params_.top_p) {
        kept = j + 1;
        break;
      }
    }
    total = std::accumulate(weight.begin(), weight.begin() + static_cast<std::ptrdiff_t>(kept), 0.0);
  }

  std::vector<double> dist(vocab, 0.0);
  for (size_t j = 0; j < kept; ++j) dist[order[j]] = weight[j] / total;
  return dist;
}

int32_t Sampler::Choose(std::span<const float> logits) {
  if (params_.temperature <= 0.0) return ArgMax(logits);
  const std::vector<double> dist = DistributionOf(logits);
  const double u = NextUniform();
  double cum = 0.0;
  int32_t last_kept = -1;
  for (size_t i = 0; i < dist.size(); ++i) {
    if (dist[i] <= 0.0) continue;
    last_kept = static_cast<int32_t>(i);
    cum += dist[i];
    if (u < cum) return last_kept;
  }
  // Rounding left u above the last cumulative sum: the last kept token.
  return last_kept < 0 ? ArgMax(logits) : last_kept;
}

void AppendLogprobsOfRows(const float* logits, int rows, int vocab, const int32_t* tokens, int top_n, int threads,
                          std::vector<TokenLogprobs>* out) {
  const size_t base = out->size();
  out->resize(base + static_cast<size_t>(std::max(rows, 0)));
  auto run = [&](int begin, int end) {
    for (int r = begin; r < end; ++r) {
      (*out)[base + r] =
          LogprobsOf(std::span<const float>(logits + static_cast<size_t>(r) * vocab, vocab), tokens[r], top_n);
    }
  };
  const int n = std::clamp(std::min(threads, rows / 4), 1, 64);  // a thread is worth a few rows
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(run, rows * t / n, rows * (t + 1) / n);
  run(0, rows / n);
  for (std::thread& th : pool) th.join();
}

}  // namespace seer
