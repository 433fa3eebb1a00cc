// Runs CUDA kernels on CPU threads, so that tests can execute cuda/ctc_device.cuh without a GPU.
//
// Each block is blockDim.x std::threads; __syncthreads is a std::barrier over the block,
// warp shuffles and __syncwarp use a barrier per warp of 32. A thread leaving the kernel drops
// out of both barriers, as an exited CUDA thread stops counting. Blocks run one after another.
// This checks indexing, barriers and reductions; it says nothing about speed.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

struct BlockState {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<double> exchange;  // 32 slots per warp for shuffles
  std::vector<double> shared;    // dynamic shared memory (8-byte aligned)
  std::atomic<int> count{0};
};

inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;
inline thread_local BlockState* this_block = nullptr;

#define DS2_DYNAMIC_SHARED(name) unsigned char* name = reinterpret_cast<unsigned char*>(this_block->shared.data())

inline void __syncthreads() { this_block->block->arrive_and_wait(); }

inline void __syncwarp(unsigned = 0xffffffffu) { this_block->warps[threadIdx.x / 32]->arrive_and_wait(); }

inline int __syncthreads_count(int predicate) {
  BlockState& state = *this_block;
  state.count.fetch_add(predicate ? 1 : 0);
  state.block->arrive_and_wait();
  const int total = state.count.load();
  state.block->arrive_and_wait();
  if (threadIdx.x == 0) state.count.store(0);
  state.block->arrive_and_wait();
  return total;
}

template <typename T>
T __shfl_xor_sync(unsigned, T value, int offset) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double* slots = this_block->exchange.data() + warp * 32;
  slots[lane] = static_cast<double>(value);
  this_block->warps[warp]->arrive_and_wait();
  const T other = static_cast<T>(slots[lane ^ static_cast<unsigned>(offset)]);
  this_block->warps[warp]->arrive_and_wait();
  return other;
}

// kernel<<<grid, threads, shared_bytes>>>(...) becomes launch(grid, threads, shared_bytes, [&] { kernel(...); }).
inline void launch(unsigned grid, unsigned threads, size_t shared_bytes, const std::function<void()>& kernel) {
  gridDim = Dim3{grid, 1, 1};
  blockDim = Dim3{threads, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    BlockState state;
    state.block = std::make_unique<std::barrier<>>(threads);
    for (unsigned w = 0; w < (threads + 31) / 32; ++w) {
      const unsigned lanes = threads - w * 32 < 32 ? threads - w * 32 : 32;
      state.warps.push_back(std::make_unique<std::barrier<>>(lanes));
    }
    state.exchange.assign(((threads + 31) / 32) * 32, 0.0);
    state.shared.assign(shared_bytes / sizeof(double) + 1, std::nan(""));  // garbage, as on a GPU
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, b, t] {
        threadIdx = Dim3{t, 0, 0};
        blockIdx = Dim3{b, 0, 0};
        this_block = &state;
        kernel();
        state.warps[t / 32]->arrive_and_drop();
        state.block->arrive_and_drop();
      });
    }
    for (auto& thread : pool) thread.join();
  }
}
