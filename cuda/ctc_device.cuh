// The CTC kernels' device code (see ctc_kernel.cu for the design). Plain CUDA C++ with no
// torch headers, so that tests/cuda_emulation can compile the same source for the CPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "ctc_limits.h"

#ifndef DS2_DYNAMIC_SHARED
#define DS2_DYNAMIC_SHARED(name) extern __shared__ unsigned char name[]
#endif

namespace {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -static_cast<acc_t>(INFINITY);
}

template <typename acc_t>
__device__ __forceinline__ acc_t log_add(acc_t a, acc_t b) {
  const acc_t hi = a > b ? a : b;
  const acc_t lo = a > b ? b : a;
  if (lo == neg_inf<acc_t>()) return hi;
  return hi + log1p_(exp_(lo - hi));
}

template <typename acc_t>
__device__ __forceinline__ acc_t log_add3(acc_t a, acc_t b, acc_t c) {
  acc_t hi = a > b ? a : b;
  hi = hi > c ? hi : c;
  if (a != a || b != b || c != c) return a + b + c;  // NaN scores give a NaN loss, as in torch
  if (hi == neg_inf<acc_t>()) return hi;
  return hi + log_(exp_(a - hi) + exp_(b - hi) + exp_(c - hi));
}

// Index of state s's character among the L+1 gathered columns: 0 = blank, i+1 = label i.
__device__ __forceinline__ int column_of(int s) { return (s & 1) ? (s + 1) / 2 : 0; }

// 1. ------------------------------------------------------------------------ lse + gather
template <typename scalar_t, typename acc_t>
__global__ void lse_gather_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ labels,
                                  const int64_t* __restrict__ input_lengths,
                                  const int64_t* __restrict__ target_lengths, int batch, int frames, int vocab,
                                  int label_width, int blank, acc_t* __restrict__ lse,
                                  acc_t* __restrict__ log_emit) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= static_cast<int64_t>(batch) * frames) return;  // whole warp
  const int b = static_cast<int>(row / frames);
  const int t = static_cast<int>(row % frames);
  if (t >= input_lengths[b]) return;  // whole warp
  const scalar_t* x = logits + row * vocab;

  acc_t peak = neg_inf<acc_t>(), total = 0;
  int saw_nan = 0;  // a NaN score makes the row's lse NaN (and the loss NaN, as in torch)
  for (int c = lane; c < vocab; c += kWarp) {
    const acc_t v = static_cast<acc_t>(x[c]);
    if (v > peak) {
      total = total * exp_(peak - v) + 1;
      peak = v;
    } else if (v != neg_inf<acc_t>()) {
      total += exp_(v - peak);
    }
    saw_nan |= v != v;
  }
  // Butterfly: every lane ends with the same (peak, total); the combine is commutative.
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const acc_t other_peak = __shfl_xor_sync(kFullMask, peak, offset);
    const acc_t other_total = __shfl_xor_sync(kFullMask, total, offset);
    saw_nan |= __shfl_xor_sync(kFullMask, saw_nan, offset);
    const acc_t top = peak > other_peak ? peak : other_peak;
    if (top != neg_inf<acc_t>()) {
      total = (peak == neg_inf<acc_t>() ? 0 : total * exp_(peak - top)) +
              (other_peak == neg_inf<acc_t>() ? 0 : other_total * exp_(other_peak - top));
    }
    peak = top;
  }
  const acc_t row_lse = saw_nan ? static_cast<acc_t>(NAN) : peak + log_(total);
  if (lane == 0) lse[row] = row_lse;

  const int64_t n_labels = target_lengths[b];
  const int n_columns = static_cast<int>(n_labels < label_width ? n_labels : label_width) + 1;
  acc_t* out = log_emit + row * (label_width + 1);
  for (int k = lane; k < n_columns; k += kWarp) {
    const int64_t c = k == 0 ? blank : labels[static_cast<int64_t>(b) * label_width + k - 1];
    // A label outside the vocabulary can never be emitted (the utterance becomes infinite).
    out[k] = (c >= 0 && c < vocab) ? static_cast<acc_t>(x[c]) - row_lse : neg_inf<acc_t>();
  }
}

// Shared by alpha and beta: the block's view of one utterance.
struct Utterance {
  int frames;  // T_b
  int states;  // S_b = 2 L_b + 1
  bool in_range;  // 0 <= T_b <= T and 0 <= L_b <= W (checked before the casts to int)
  bool alignable;
};

// Every thread of the block computes the same answer (repeats counted with barrier counts).
__device__ Utterance read_utterance(const int64_t* __restrict__ labels, const int64_t* __restrict__ input_lengths,
                                    const int64_t* __restrict__ target_lengths, int b, int frames,
                                    int label_width) {
  const int64_t n_frames = input_lengths[b];
  const int64_t n_labels = target_lengths[b];
  Utterance u{0, 1, false, false};
  if (n_frames < 0 || n_frames > frames || n_labels < 0 || n_labels > label_width) return u;
  u.frames = static_cast<int>(n_frames);
  u.states = static_cast<int>(2 * n_labels + 1);
  u.in_range = true;
  const int64_t* label = labels + static_cast<int64_t>(b) * label_width;
  int repeats = 0;
  for (int start = 0; start < n_labels; start += blockDim.x) {
    const int i = start + threadIdx.x;
    repeats += __syncthreads_count(i > 0 && i < n_labels && label[i] == label[i - 1]);
  }
  u.alignable = n_labels + repeats <= n_frames;
  return u;
}

// Does the transition s-2 -> s exist? (s is a label that differs from the label before it.)
__device__ __forceinline__ bool skip_into(const int64_t* __restrict__ label, int s) {
  return (s & 1) && s >= 3 && label[(s - 1) / 2] != label[(s - 3) / 2];
}

// 2. ------------------------------------------------------------------------------ alpha
template <typename acc_t>
__global__ void __launch_bounds__(kMaxThreads) alpha_kernel(const acc_t* __restrict__ log_emit, const int64_t* __restrict__ labels,
                             const int64_t* __restrict__ input_lengths,
                             const int64_t* __restrict__ target_lengths, int frames, int label_width,
                             acc_t* __restrict__ alpha, acc_t* __restrict__ losses) {
  DS2_DYNAMIC_SHARED(shared_bytes);
  const int max_states = 2 * label_width + 1;
  acc_t* prev = reinterpret_cast<acc_t*>(shared_bytes);
  acc_t* cur = prev + max_states;
  const int b = blockIdx.x;
  const Utterance u = read_utterance(labels, input_lengths, target_lengths, b, frames, label_width);
  if (u.frames == 0 || !u.alignable) {  // the empty sequence over zero frames has probability 1
    const bool empty = u.in_range && u.frames == 0 && u.states == 1;
    if (threadIdx.x == 0) losses[b] = empty ? acc_t(0) : static_cast<acc_t>(INFINITY);
    return;
  }
  const int64_t* label = labels + static_cast<int64_t>(b) * label_width;
  const acc_t* emit = log_emit + static_cast<int64_t>(b) * frames * (label_width + 1);
  acc_t* out = alpha == nullptr ? nullptr : alpha + static_cast<int64_t>(b) * frames * max_states;

  // Each thread owns states threadIdx.x + i * blockDim.x, i < kMaxStateItems.
  bool skip[kMaxStateItems];
  int column[kMaxStateItems];
  acc_t next_emit[kMaxStateItems];
#pragma unroll
  for (int i = 0; i < kMaxStateItems; ++i) {
    const int s = threadIdx.x + i * blockDim.x;
    next_emit[i] = 0;
    skip[i] = s < u.states && skip_into(label, s);
    column[i] = column_of(s);
    if (s < u.states) {
      const acc_t first = s < 2 ? emit[column[i]] : neg_inf<acc_t>();
      prev[s] = first;
      if (out != nullptr) out[s] = first;
      next_emit[i] = u.frames > 1 ? emit[(label_width + 1) + column[i]] : acc_t(0);
    }
  }
  __syncthreads();
  for (int t = 1; t < u.frames; ++t) {
    acc_t emit_now[kMaxStateItems];
#pragma unroll
    for (int i = 0; i < kMaxStateItems; ++i) {
      const int s = threadIdx.x + i * blockDim.x;
      emit_now[i] = next_emit[i];
      // Prefetch the next frame's emissions: off the dependent path.
      if (s < u.states && t + 1 < u.frames) next_emit[i] = emit[static_cast<int64_t>(t + 1) * (label_width + 1) + column[i]];
    }
#pragma unroll
    for (int i = 0; i < kMaxStateItems; ++i) {
      const int s = threadIdx.x + i * blockDim.x;
      if (s < u.states) {
        const acc_t value = log_add3(prev[s], s >= 1 ? prev[s - 1] : neg_inf<acc_t>(),
                                     skip[i] ? prev[s - 2] : neg_inf<acc_t>()) +
                            emit_now[i];
        cur[s] = value;
        if (out != nullptr) out[static_cast<int64_t>(t) * max_states + s] = value;
      }
    }
    __syncthreads();
    acc_t* swap = prev;
    prev = cur;
    cur = swap;
  }
  if (threadIdx.x == 0) {
    const acc_t end = u.states > 1 ? log_add(prev[u.states - 1], prev[u.states - 2]) : prev[0];
    losses[b] = -end;
  }
}

// 3. ------------------------------------------------------------- beta, log occupancy
// shared "weighted" rows hold beta_t(s) + log y_t(s), what the frame before needs.
template <typename acc_t>
__global__ void __launch_bounds__(kMaxThreads) beta_kernel(const acc_t* __restrict__ log_emit, const int64_t* __restrict__ labels,
                            const int64_t* __restrict__ input_lengths, const int64_t* __restrict__ target_lengths,
                            const acc_t* __restrict__ losses, int frames, int label_width,
                            acc_t* __restrict__ alpha) {
  DS2_DYNAMIC_SHARED(shared_bytes);
  const int max_states = 2 * label_width + 1;
  acc_t* later = reinterpret_cast<acc_t*>(shared_bytes);  // weighted beta of frame t+1
  acc_t* now = later + max_states;
  const int b = blockIdx.x;
  const acc_t loss = losses[b];
  if (!(loss < static_cast<acc_t>(INFINITY))) return;  // infinite or NaN: the epilogue writes zeros
  const int64_t n_frames = input_lengths[b];
  const int64_t n_labels = target_lengths[b];
  if (n_frames <= 0 || n_frames > frames || n_labels < 0 || n_labels > label_width) return;
  const int states = static_cast<int>(2 * n_labels + 1);
  const int last = static_cast<int>(n_frames) - 1;
  const int64_t* label = labels + static_cast<int64_t>(b) * label_width;
  const acc_t* emit = log_emit + static_cast<int64_t>(b) * frames * (label_width + 1);
  acc_t* occupancy = alpha + static_cast<int64_t>(b) * frames * max_states;
  const acc_t log_likelihood = -loss;

  bool skip_next[kMaxStateItems];  // does s -> s+2 exist?
  int column[kMaxStateItems];
  acc_t emit_now[kMaxStateItems], alpha_now[kMaxStateItems];
#pragma unroll
  for (int i = 0; i < kMaxStateItems; ++i) {
    const int s = threadIdx.x + i * blockDim.x;
    emit_now[i] = alpha_now[i] = 0;
    skip_next[i] = s + 2 < states && skip_into(label, s + 2);
    column[i] = column_of(s);
    if (s < states) {
      const acc_t beta = s >= states - 2 ? acc_t(0) : neg_inf<acc_t>();
      const int64_t at = static_cast<int64_t>(last) * max_states + s;
      occupancy[at] = occupancy[at] + beta - log_likelihood;
      later[s] = beta + emit[static_cast<int64_t>(last) * (label_width + 1) + column[i]];
      if (last > 0) {
        emit_now[i] = emit[static_cast<int64_t>(last - 1) * (label_width + 1) + column[i]];
        alpha_now[i] = occupancy[static_cast<int64_t>(last - 1) * max_states + s];
      }
    }
  }
  __syncthreads();
  for (int t = last - 1; t >= 0; --t) {
    acc_t emit_t[kMaxStateItems], alpha_t[kMaxStateItems];
#pragma unroll
    for (int i = 0; i < kMaxStateItems; ++i) {
      const int s = threadIdx.x + i * blockDim.x;
      emit_t[i] = emit_now[i];
      alpha_t[i] = alpha_now[i];
      if (s < states && t > 0) {  // prefetch frame t-1: independent of the recursion
        emit_now[i] = emit[static_cast<int64_t>(t - 1) * (label_width + 1) + column[i]];
        alpha_now[i] = occupancy[static_cast<int64_t>(t - 1) * max_states + s];
      }
    }
#pragma unroll
    for (int i = 0; i < kMaxStateItems; ++i) {
      const int s = threadIdx.x + i * blockDim.x;
      if (s < states) {
        const acc_t beta = log_add3(later[s], s + 1 < states ? later[s + 1] : neg_inf<acc_t>(),
                                    skip_next[i] ? later[s + 2] : neg_inf<acc_t>());
        occupancy[static_cast<int64_t>(t) * max_states + s] = alpha_t[i] + beta - log_likelihood;
        now[s] = beta + emit_t[i];
      }
    }
    __syncthreads();
    acc_t* swap = later;
    later = now;
    now = swap;
  }
}

// 4. -------------------------------------------------------------------------- sort_keys
// sorted_state[b, r] = the state (2i+1) of the label position i with rank r when positions
// are ordered by (character, position); sorted_char[b, r] = its character.
__global__ void sort_keys_kernel(const int64_t* __restrict__ labels, const int64_t* __restrict__ target_lengths,
                                 int label_width, int* __restrict__ sorted_state, int* __restrict__ sorted_char) {
  const int b = blockIdx.x;
  const int64_t length = target_lengths[b];
  const int n_labels = static_cast<int>(length < 0 ? 0 : (length < label_width ? length : label_width));
  const int64_t* label = labels + static_cast<int64_t>(b) * label_width;
  for (int i = threadIdx.x; i < n_labels; i += blockDim.x) {
    const int64_t c = label[i];
    int rank = 0;
    for (int j = 0; j < n_labels; ++j) rank += (label[j] < c) || (label[j] == c && j < i);
    sorted_state[static_cast<int64_t>(b) * label_width + rank] = 2 * i + 1;
    sorted_char[static_cast<int64_t>(b) * label_width + rank] = static_cast<int>(c);
  }
}

// 5. --------------------------------------------------------------------------- epilogue
template <typename scalar_t, typename acc_t>
__global__ void epilogue_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ input_lengths,
                                const int64_t* __restrict__ target_lengths, const acc_t* __restrict__ lse,
                                const acc_t* __restrict__ occupancy, const int* __restrict__ sorted_state,
                                const int* __restrict__ sorted_char, const acc_t* __restrict__ scale, int batch,
                                int frames, int vocab, int label_width, int blank, scalar_t* __restrict__ grad) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= static_cast<int64_t>(batch) * frames) return;  // whole warp
  const int b = static_cast<int>(row / frames);
  const int t = static_cast<int>(row % frames);
  const acc_t g = static_cast<acc_t>(scale[b]);
  scalar_t* out = grad + row * vocab;
  if (t >= input_lengths[b] || g == acc_t(0)) {
    for (int c = lane; c < vocab; c += kWarp) out[c] = scalar_t(0);
    return;
  }
  const scalar_t* x = logits + row * vocab;
  const acc_t row_lse = lse[row];
  for (int c = lane; c < vocab; c += kWarp) out[c] = static_cast<scalar_t>(g * exp_(static_cast<acc_t>(x[c]) - row_lse));

  const int64_t length = target_lengths[b];
  const int n_labels = static_cast<int>(length < label_width ? length : label_width);
  const int max_states = 2 * label_width + 1;
  const acc_t* occ = occupancy + (static_cast<int64_t>(b) * frames + t) * max_states;
  // Blank: states 0, 2, ..., 2L; strided lane sums, then a fixed butterfly.
  acc_t blank_sum = 0;
  for (int j = lane; j <= n_labels; j += kWarp) blank_sum += exp_(occ[2 * j]);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) blank_sum += __shfl_xor_sync(kFullMask, blank_sum, offset);
  __syncwarp();  // the softmax stores above come before the label columns' stores below
  if (lane == 0) out[blank] = static_cast<scalar_t>(g * (exp_(static_cast<acc_t>(x[blank]) - row_lse) - blank_sum));
  // Labels: the lane that finds the head of a character's run sums the run in order.
  const int* states = sorted_state + static_cast<int64_t>(b) * label_width;
  const int* chars = sorted_char + static_cast<int64_t>(b) * label_width;
  for (int r = lane; r < n_labels; r += kWarp) {
    const int c = chars[r];
    if (r > 0 && chars[r - 1] == c) continue;
    // Labels outside the vocabulary make the loss infinite (g = 0, never here); a label equal
    // to the blank is refused by ds2.ctc on the CPU and not supported here.
    if (c < 0 || c >= vocab || c == blank) continue;
    acc_t sum = 0;
    for (int q = r; q < n_labels && chars[q] == c; ++q) sum += exp_(occ[states[q]]);
    out[c] = static_cast<scalar_t>(g * (exp_(static_cast<acc_t>(x[c]) - row_lse) - sum));
  }
}

}  // namespace
