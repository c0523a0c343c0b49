// GateLoss and its backward, one task per mask_linear_k head (so each task
// owns its slices of the gradient); per Q head of the task, in stages:
//
//   project   k' = pooledK[g] @ Wk[t], q' = pooledQ[h] (@ Wq[h])
//   rotate    block RoPE on q' and k'
//   scores    s = q'.k'^T * hidden^-0.5 over the causal blocks of the loss rows
//   loss      KL(target || softmax(s)) per row; ds = (p * sum(target) - target) / N
//   back      dq', dk' through the scores and the inverse rotation, then the
//             outer products into dWq[h] and dWk[t]

#include "train/gate_grad.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "kernels/common/parallel.h"

namespace seer::train {
namespace {

// Rotates x [nb, hidden] in place: block b by cos/sin row b (half-split).
void Rotate(std::vector<double>& x, const GateFeatures& f, int hidden) {
  const int half = hidden / 2;
  for (int b = 0; b < f.num_blocks; ++b) {
    const double* c = f.cos.data() + size_t(b) * half;
    const double* s = f.sin.data() + size_t(b) * half;
    double* v = x.data() + size_t(b) * hidden;
    for (int i = 0; i < half; ++i) {
      const double x1 = v[i], x2 = v[i + half];
      v[i] = x1 * c[i] - x2 * s[i];
      v[i + half] = x2 * c[i] + x1 * s[i];
    }
  }
}

// The transpose of Rotate, for gradients.
void RotateBack(std::vector<double>& g, const GateFeatures& f, int hidden) {
  const int half = hidden / 2;
  for (int b = 0; b < f.num_blocks; ++b) {
    const double* c = f.cos.data() + size_t(b) * half;
    const double* s = f.sin.data() + size_t(b) * half;
    double* v = g.data() + size_t(b) * hidden;
    for (int i = 0; i < half; ++i) {
      const double g1 = v[i], g2 = v[i + half];
      v[i] = g1 * c[i] + g2 * s[i];
      v[i + half] = g2 * c[i] - g1 * s[i];
    }
  }
}

// out[b] = x[b] @ W for every block: x rows of `in` values `x_stride` apart,
// W [in, hidden].
void Project(const double* x, size_t x_stride, int in, const double* w, int nb, int hidden, std::vector<double>& out) {
  out.assign(size_t(nb) * hidden, 0.0);
  for (int b = 0; b < nb; ++b) {
    const double* xv = x + size_t(b) * x_stride;
    double* o = out.data() + size_t(b) * hidden;
    for (int i = 0; i < in; ++i) {
      const double xi = xv[i];
      const double* wr = w + size_t(i) * hidden;
      for (int j = 0; j < hidden; ++j) o[j] += xi * wr[j];
    }
  }
}

// dW += sum over blocks of x[b]^T (outer) g[b].
void AccumulateOuter(const double* x, size_t x_stride, int in, const std::vector<double>& g, int nb, int hidden,
                     double* dw) {
  for (int b = 0; b < nb; ++b) {
    const double* xv = x + size_t(b) * x_stride;
    const double* gv = g.data() + size_t(b) * hidden;
    for (int i = 0; i < in; ++i) {
      const double xi = xv[i];
      if (xi == 0.0) continue;
      double* wr = dw + size_t(i) * hidden;
      for (int j = 0; j < hidden; ++j) wr[j] += xi * gv[j];
    }
  }
}

// Rotated q' and k' of Q head h, each [nb, hidden].
struct HeadVectors {
  std::vector<double> q, k;
};

void HeadForward(const GateShape& s, const GateFeatures& f, const GateParams& w, int h, HeadVectors* v) {
  const int nb = f.num_blocks, D = s.head_dim, hid = s.hidden;
  const int g = h / (s.num_heads / s.num_kv_heads);
  const int t = h / (s.num_heads / s.k_weight_heads);
  Project(f.k.data() + size_t(g) * 3 * D, size_t(s.num_kv_heads) * 3 * D, 3 * D, w.k.data() + size_t(t) * 3 * D * hid,
          nb, hid, v->k);
  if (s.has_q_weight) {
    Project(f.q.data() + size_t(h) * D, size_t(s.num_heads) * D, D, w.q.data() + size_t(h) * D * hid, nb, hid, v->q);
  } else {
    v->q.resize(size_t(nb) * hid);
    for (int b = 0; b < nb; ++b) {
      std::copy_n(f.q.data() + (size_t(b) * s.num_heads + h) * D, hid, v->q.data() + size_t(b) * hid);
    }
  }
  Rotate(v->q, f, hid);
  Rotate(v->k, f, hid);
}

double Dot(const double* a, const double* b, int n) {
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

GateFeatures PoolGateFeatures(const GateShape& s, const float* q, const float* k, int seq_len,
                              const std::vector<float>& rope_inv_freq, int num_threads) {
  assert(static_cast<int>(rope_inv_freq.size()) == s.hidden / 2);
  GateFeatures f;
  const int bs = s.block_size, D = s.head_dim;
  const int nb = (seq_len + bs - 1) / bs;
  f.num_blocks = nb;
  const size_t q_row = size_t(s.num_heads) * D, k_row = size_t(s.num_kv_heads) * D;
  f.q.assign(size_t(nb) * q_row, 0.0);
  f.k.assign(size_t(nb) * k_row * 3, 0.0);
  cpu::ParallelFor(nb, std::max(1, num_threads), [&](int b) {
    const int t0 = b * bs, t1 = std::min(seq_len, t0 + bs);
    const double count = t1 - t0;
    double* pq = f.q.data() + size_t(b) * q_row;
    for (int t = t0; t < t1; ++t) {
      const float* x = q + size_t(t) * q_row;
      for (size_t c = 0; c < q_row; ++c) pq[c] += x[c];
    }
    for (size_t c = 0; c < q_row; ++c) pq[c] /= count;
    for (int h = 0; h < s.num_kv_heads; ++h) {
      double* out = f.k.data() + (size_t(b) * s.num_kv_heads + h) * 3 * D;
      for (int c = 0; c < D; ++c) {
        double mx = -INFINITY, mn = INFINITY, sum = 0.0;
        for (int t = t0; t < t1; ++t) {
          const double v = k[size_t(t) * k_row + size_t(h) * D + c];
          mx = std::max(mx, v);
          mn = std::min(mn, v);
          sum += v;
        }
        out[c] = mx;
        out[D + c] = mn;
        out[2 * D + c] = sum / count;
      }
    }
  });
  const int half = s.hidden / 2;
  f.cos.resize(size_t(nb) * half);
  f.sin.resize(size_t(nb) * half);
  for (int b = 0; b < nb; ++b) {
    const float pos = static_cast<float>(int64_t{b} * bs);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * rope_inv_freq[i];
      f.cos[size_t(b) * half + i] = std::cos(static_cast<double>(angle));
      f.sin[size_t(b) * half + i] = std::sin(static_cast<double>(angle));
    }
  }
  return f;
}

std::vector<double> GateProbs(const GateShape& s, const GateFeatures& f, const GateParams& w, int num_threads) {
  const int nb = f.num_blocks, hid = s.hidden;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hid));
  std::vector<double> probs(size_t(s.num_heads) * nb * nb, 0.0);
  cpu::ParallelFor(s.num_heads, std::max(1, num_threads), [&](int h) {
    HeadVectors v;
    HeadForward(s, f, w, h, &v);
    for (int i = 0; i < nb; ++i) {
      double* row = probs.data() + (size_t(h) * nb + i) * nb;
      double mx = -INFINITY;
      for (int j = 0; j <= i; ++j) {
        row[j] = scale * Dot(v.q.data() + size_t(i) * hid, v.k.data() + size_t(j) * hid, hid);
        mx = std::max(mx, row[j]);
      }
      double sum = 0.0;
      for (int j = 0; j <= i; ++j) sum += (row[j] = std::exp(row[j] - mx));
      for (int j = 0; j <= i; ++j) row[j] /= sum;
    }
  });
  return probs;
}

double GateLoss(const GateShape& s, const GateFeatures& f, const float* target, const GateParams& w, GateParams* grad,
                double grad_scale, int num_threads) {
  const int nb = f.num_blocks, D = s.head_dim, hid = s.hidden;
  if (nb == 0) return 0.0;
  const int first_row = FirstLossRow(nb);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hid));
  // KLDivLoss(reduction="mean") over the [Hq, nb - nb/4, nb] tensor.
  const double inv_n = 1.0 / (double(s.num_heads) * double(nb - first_row) * double(nb));
  const int heads_per_task = s.num_heads / s.k_weight_heads;
  std::vector<double> head_loss(s.num_heads, 0.0);

  cpu::ParallelFor(s.k_weight_heads, std::max(1, num_threads), [&](int task) {
    HeadVectors v;
    std::vector<double> lp(nb), dq, dk;
    for (int h = task * heads_per_task; h < (task + 1) * heads_per_task; ++h) {
      HeadForward(s, f, w, h, &v);
      if (grad != nullptr) {
        dq.assign(size_t(nb) * hid, 0.0);
        dk.assign(size_t(nb) * hid, 0.0);
      }
      double loss = 0.0;
      for (int i = first_row; i < nb; ++i) {
        const double* qi = v.q.data() + size_t(i) * hid;
        const float* trow = target + (size_t(h) * nb + i) * nb;
        double mx = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          lp[j] = scale * Dot(qi, v.k.data() + size_t(j) * hid, hid);
          mx = std::max(mx, lp[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(lp[j] - mx);
        const double lse = mx + std::log(sum);
        double target_sum = 0.0;
        for (int j = 0; j <= i; ++j) {
          lp[j] -= lse;  // log p
          const double t = trow[j];
          if (t > 0.0) loss += t * (std::log(t) - lp[j]);
          target_sum += t;
        }
        if (grad == nullptr) continue;
        double* dqi = dq.data() + size_t(i) * hid;
        for (int j = 0; j <= i; ++j) {
          const double ds = grad_scale * inv_n * scale * (std::exp(lp[j]) * target_sum - double(trow[j]));
          if (ds == 0.0) continue;
          const double* kj = v.k.data() + size_t(j) * hid;
          double* dkj = dk.data() + size_t(j) * hid;
          for (int c = 0; c < hid; ++c) {
            dqi[c] += ds * kj[c];
            dkj[c] += ds * qi[c];
          }
        }
      }
      head_loss[h] = loss * inv_n;
      if (grad == nullptr) continue;
      RotateBack(dq, f, hid);
      RotateBack(dk, f, hid);
      const int g = h / (s.num_heads / s.num_kv_heads);
      AccumulateOuter(f.k.data() + size_t(g) * 3 * D, size_t(s.num_kv_heads) * 3 * D, 3 * D, dk, nb, hid,
                      grad->k.data() + size_t(task) * 3 * D * hid);
      if (s.has_q_weight) {
        AccumulateOuter(f.q.data() + size_t(h) * D, size_t(s.num_heads) * D, D, dq, nb, hid,
                        grad->q.data() + size_t(h) * D * hid);
      }
    }
  });
  double total = 0.0;
  for (double l : head_loss) total += l;  // in head order: independent of the threads
  return total;
}

}  // namespace seer::train
