// CTC loss on the GPU, after Deep Speech 2 appendix A.2.
//
// Log space throughout, accumulation in float32 (float64 for float64 logits). Per call:
//
//   1. lse_gather   one warp per frame: a single streaming pass over the V logits gives the
//                   log-sum-exp (online max + sum); the warp then gathers the log-probs of the
//                   L+1 characters the transcript uses (blank, l1..lL) into log_emit (B,T,L+1).
//                   Nothing vocabulary-sized enters the time loop.
//   2. alpha        one block per utterance, every state of a time column in parallel, columns
//                   in sequence (one barrier per frame), two columns in shared memory; alpha is
//                   written to global memory for the backward recursion.
//   3. beta         one block per utterance, beta in two shared rows; overwrites alpha in place
//                   with the log occupancy alpha_t(s) + beta_t(s) - log p(l|x) of each state.
//   4. sort_keys    once per utterance: the label positions sorted by character (stable), so
//                   the states of one character form a contiguous run.
//   5. epilogue     one warp per frame, the whole gradient in one pass:
//                   grad = g_b * (softmax - occupancy), occupancy summed per character over
//                   its sorted run by one lane (blank: a fixed warp tree), zero on padded
//                   frames and where g_b == 0 (infinite losses get g_b = 0 from the caller).
//
// No atomics and fixed reduction orders: results are identical bit for bit from run to run.
// Lengths are read on the device; the host never waits for the GPU.

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <vector>

#include "ctc_device.cuh"
#include "ctc_kernel.h"

namespace {

template <typename kernel_t>
void allow_shared(kernel_t kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

}  // namespace

std::vector<at::Tensor> ctc_forward_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                         const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                                         int64_t blank, bool need_grad) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int batch = static_cast<int>(logits.size(0));
  const int frames = static_cast<int>(logits.size(1));
  const int vocab = static_cast<int>(logits.size(2));
  const int label_width = static_cast<int>(labels.size(1));
  const int max_states = 2 * label_width + 1;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto options = logits.options().dtype(acc_type);

  at::Tensor losses = at::empty({batch}, options);
  at::Tensor lse = at::empty({batch, frames}, options);
  at::Tensor log_emit = at::empty({batch, frames, label_width + 1}, options);
  at::Tensor alpha = need_grad ? at::empty({batch, frames, max_states}, options) : at::Tensor();
  at::Tensor sorted_state = at::empty({batch, label_width}, logits.options().dtype(at::kInt));
  at::Tensor sorted_char = at::empty({batch, label_width}, logits.options().dtype(at::kInt));
  if (batch == 0) return {losses, lse, alpha, sorted_state, sorted_char};

  const int64_t rows = static_cast<int64_t>(batch) * frames;
  const int row_blocks = static_cast<int>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  const int threads = state_threads(max_states);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, logits.scalar_type(), "ds2_ctc_forward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    if (rows > 0) {
      lse_gather_kernel<scalar_t, acc_t><<<row_blocks, kRowsPerBlock * kWarp, 0, stream>>>(
          logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), input_lengths.data_ptr<int64_t>(),
          target_lengths.data_ptr<int64_t>(), batch, frames, vocab, label_width, static_cast<int>(blank),
          lse.data_ptr<acc_t>(), log_emit.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const size_t shared = 2 * static_cast<size_t>(max_states) * sizeof(acc_t);
    allow_shared(alpha_kernel<acc_t>, shared);
    alpha_kernel<acc_t><<<batch, threads, shared, stream>>>(
        log_emit.data_ptr<acc_t>(), labels.data_ptr<int64_t>(), input_lengths.data_ptr<int64_t>(),
        target_lengths.data_ptr<int64_t>(), frames, label_width,
        need_grad ? alpha.data_ptr<acc_t>() : nullptr, losses.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (need_grad) {
      allow_shared(beta_kernel<acc_t>, shared);
      beta_kernel<acc_t><<<batch, threads, shared, stream>>>(
          log_emit.data_ptr<acc_t>(), labels.data_ptr<int64_t>(), input_lengths.data_ptr<int64_t>(),
          target_lengths.data_ptr<int64_t>(), losses.data_ptr<acc_t>(), frames, label_width,
          alpha.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (label_width > 0) {
        sort_keys_kernel<<<batch, 128, 0, stream>>>(labels.data_ptr<int64_t>(), target_lengths.data_ptr<int64_t>(),
                                                    label_width, sorted_state.data_ptr<int>(),
                                                    sorted_char.data_ptr<int>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return {losses, lse, alpha, sorted_state, sorted_char};
}

at::Tensor ctc_backward_cuda(const at::Tensor& logits, const at::Tensor& input_lengths,
                             const at::Tensor& target_lengths, const at::Tensor& lse, const at::Tensor& occupancy,
                             const at::Tensor& sorted_state, const at::Tensor& sorted_char, const at::Tensor& scale,
                             int64_t blank) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int batch = static_cast<int>(logits.size(0));
  const int frames = static_cast<int>(logits.size(1));
  const int vocab = static_cast<int>(logits.size(2));
  const int label_width = static_cast<int>(sorted_state.size(1));
  at::Tensor grad = at::empty_like(logits);
  const int64_t rows = static_cast<int64_t>(batch) * frames;
  if (rows == 0) return grad;
  const int row_blocks = static_cast<int>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, logits.scalar_type(), "ds2_ctc_backward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    epilogue_kernel<scalar_t, acc_t><<<row_blocks, kRowsPerBlock * kWarp, 0, stream>>>(
        logits.data_ptr<scalar_t>(), input_lengths.data_ptr<int64_t>(), target_lengths.data_ptr<int64_t>(),
        lse.data_ptr<acc_t>(), occupancy.data_ptr<acc_t>(), sorted_state.data_ptr<int>(),
        sorted_char.data_ptr<int>(), scale.data_ptr<acc_t>(), batch, frames, vocab, label_width,
        static_cast<int>(blank), grad.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}
