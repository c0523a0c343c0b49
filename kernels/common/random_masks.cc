#include "kernels/common/random_masks.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace seer {

// Exactly round(sparsity * causal) off-diagonal blocks skipped per head.
BlockMask UniformRandomMask(int heads, int seq_len, double sparsity, uint32_t seed) {
  BlockMask m = BlockMask::Dense(heads, seq_len, 64);
  const int nb = m.num_blocks;
  const int64_t causal = static_cast<int64_t>(nb) * (nb + 1) / 2;
  const int64_t off_diagonal = causal - nb;
  const int64_t skip = std::min<int64_t>(off_diagonal, std::llround(sparsity * static_cast<double>(causal)));
  std::mt19937_64 rng(seed);
  std::vector<int32_t> slots(off_diagonal);  // off-diagonal block k as (qb, kb): qb*(qb-1)/2 + kb
  for (int h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < off_diagonal; ++i) slots[i] = static_cast<int32_t>(i);
    // Partial Fisher-Yates: the first `skip` slots become a uniform sample.
    for (int64_t i = 0; i < skip; ++i) {
      const int64_t j = i + static_cast<int64_t>(rng() % static_cast<uint64_t>(off_diagonal - i));
      std::swap(slots[i], slots[j]);
    }
    for (int64_t i = 0; i < skip; ++i) {
      const int64_t s = slots[i];
      int qb = static_cast<int>((1.0 + std::sqrt(1.0 + 8.0 * static_cast<double>(s))) / 2.0);
      while (static_cast<int64_t>(qb) * (qb - 1) / 2 > s) --qb;
      while (static_cast<int64_t>(qb + 1) * qb / 2 <= s) ++qb;
      const int kb = static_cast<int>(s - static_cast<int64_t>(qb) * (qb - 1) / 2);
      m.keep[(static_cast<size_t>(h) * nb + qb) * nb + kb] = 0;
    }
  }
  return m;
}

// Every row keeps min(qb + 1, k) blocks: the diagonal and k - 1 of the
// blocks before it, uniformly at random (Floyd's sampling), with k the row
// length whose total comes nearest round((1 - sparsity) * causal) per head.
BlockMask EqualRowsRandomMask(int heads, int seq_len, double sparsity, uint32_t seed) {
  BlockMask m = BlockMask::Dense(heads, seq_len, 64);
  const int nb = m.num_blocks;
  const int64_t causal = static_cast<int64_t>(nb) * (nb + 1) / 2;
  const int64_t want = std::llround((1.0 - sparsity) * static_cast<double>(causal));
  auto total = [nb](int64_t k) {
    int64_t t = 0;
    for (int64_t qb = 0; qb < nb; ++qb) t += std::min(qb + 1, k);
    return t;
  };
  int64_t lo = 1, hi = nb;  // the smallest k whose total reaches `want`
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (total(mid) < want) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  const int64_t k = (lo > 1 && want - total(lo - 1) < total(lo) - want) ? lo - 1 : lo;
  std::mt19937_64 rng(seed);
  for (int h = 0; h < heads; ++h) {
    for (int qb = 0; qb < nb; ++qb) {
      if (qb + 1 <= k) continue;
      uint8_t* row = m.keep.data() + (static_cast<size_t>(h) * nb + qb) * nb;
      std::fill_n(row, qb, 0);
      // k - 1 distinct blocks of [0, qb).
      for (int64_t j = qb - (k - 1); j < qb; ++j) {
        const int64_t t = static_cast<int64_t>(rng() % static_cast<uint64_t>(j + 1));
        row[row[t] ? j : t] = 1;
      }
    }
  }
  return m;
}

}  // namespace seer
