// Launch limits shared by the kernels, their launchers and the binding's checks.
#pragma once

// The alpha/beta kernels run one block per utterance with up to kMaxThreads threads, each
// owning at most kMaxStateItems states: label sequences up to (4096 - 1) / 2 = 2047.
constexpr int kMaxThreads = 1024;
constexpr int kMaxStateItems = 4;
constexpr int kMaxStates = kMaxThreads * kMaxStateItems;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps (frames) per block in lse_gather and the epilogue

// Threads of the alpha/beta blocks for label width W (max_states = 2W + 1): whole warps.
inline int state_threads(int max_states) {
  int threads = ((max_states + kWarp - 1) / kWarp) * kWarp;
  if (threads > kMaxThreads) threads = kMaxThreads;
  return threads < kWarp ? kWarp : threads;
}
