// Declarations shared by ctc_kernel.cu (the maths) and ctc_binding.cpp (checks, launch).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "ctc_limits.h"


// Returns {losses (B,), lse (B,T), log occupancy (B,T,2W+1) or undefined, sorted_state (B,W),
// sorted_char (B,W)}; float32 for float32/float16/bfloat16 logits, float64 for float64.
std::vector<at::Tensor> ctc_forward_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                         const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                                         int64_t blank, bool need_grad);

// grad (B,T,V), logits' dtype: scale[b] * (softmax - occupancy), zero past input_lengths[b].
at::Tensor ctc_backward_cuda(const at::Tensor& logits, const at::Tensor& input_lengths,
                             const at::Tensor& target_lengths, const at::Tensor& lse, const at::Tensor& occupancy,
                             const at::Tensor& sorted_state, const at::Tensor& sorted_char, const at::Tensor& scale,
                             int64_t blank);
