#include "kernels/paged_kv/paged_kv_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace seer::cpu {

void PagedDecodeAttention(const PagedShape& s, const float* q, const float* k_pages, const float* v_pages,
                          const int32_t* table, int context, float* out) {
  const int D = s.head_dim;
  const int group = s.num_heads / s.num_kv_heads;
  std::vector<float> scores(static_cast<size_t>(std::max(context, 0)));
  for (int h = 0; h < s.num_heads; ++h) {
    float* o = out + static_cast<int64_t>(h) * D;
    std::fill(o, o + D, 0.0f);
    if (context <= 0) continue;
    const int kvh = h / group;
    const float* qh = q + static_cast<int64_t>(h) * D;
    float mx = -INFINITY;
    for (int t = 0; t < context; ++t) {
      const float* k = k_pages + PageOffset(s, table[t / s.page_tokens], kvh, t % s.page_tokens);
      double dot = 0.0;
      for (int d = 0; d < D; ++d) dot += static_cast<double>(qh[d]) * k[d];
      scores[t] = static_cast<float>(dot) * s.scale;
      mx = std::max(mx, scores[t]);
    }
    double sum = 0.0;
    std::vector<double> acc(D, 0.0);
    for (int t = 0; t < context; ++t) {
      const double p = std::exp(static_cast<double>(scores[t]) - mx);
      sum += p;
      const float* v = v_pages + PageOffset(s, table[t / s.page_tokens], kvh, t % s.page_tokens);
      for (int d = 0; d < D; ++d) acc[d] += p * v[d];
    }
    for (int d = 0; d < D; ++d) o[d] = static_cast<float>(acc[d] / sum);
  }
}

void WriteKvPaged(const PagedShape& s, const float* k, const float* v, const int32_t* table, int pos, float* k_pages,
                  float* v_pages) {
  const int D = s.head_dim;
  for (int h = 0; h < s.num_kv_heads; ++h) {
    const int64_t at = PageOffset(s, table[pos / s.page_tokens], h, pos % s.page_tokens);
    std::memcpy(k_pages + at, k + static_cast<int64_t>(h) * D, sizeof(float) * D);
    std::memcpy(v_pages + at, v + static_cast<int64_t>(h) * D, sizeof(float) * D);
  }
}

void ScatterToPages(const PagedShape& s, const float* src, int t0, int n, const int32_t* table, float* pages) {
  const int D = s.head_dim;
  for (int h = 0; h < s.num_kv_heads; ++h) {
    for (int i = 0; i < n; ++i) {
      const int t = t0 + i;
      std::memcpy(pages + PageOffset(s, table[t / s.page_tokens], h, t % s.page_tokens),
                  src + (static_cast<int64_t>(h) * n + i) * D, sizeof(float) * D);
    }
  }
}

void GatherFromPages(const PagedShape& s, const float* pages, const int32_t* table, int t0, int n, float* dst) {
  const int D = s.head_dim;
  for (int h = 0; h < s.num_kv_heads; ++h) {
    for (int i = 0; i < n; ++i) {
      const int t = t0 + i;
      std::memcpy(dst + (static_cast<int64_t>(h) * n + i) * D,
                  pages + PageOffset(s, table[t / s.page_tokens], h, t % s.page_tokens), sizeof(float) * D);
    }
  }
}

}  // namespace seer::cpu
