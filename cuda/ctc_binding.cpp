// Python binding for the CUDA CTC kernel: checks devices, shapes and dtypes, then launches.
// The maths is in ctc_kernel.cu. Nothing here reads tensor values (no host synchronization).

#include <torch/extension.h>

#include <vector>

#include "ctc_kernel.h"

namespace {

void check_on(const at::Tensor& tensor, const at::Tensor& logits, const char* name) {
  TORCH_CHECK(tensor.device() == logits.device(), "ds2 CTC: ", name, " is on ", tensor.device(),
              " but the logits are on ", logits.device());
}

void check_lengths(const at::Tensor& lengths, const at::Tensor& logits, const char* name) {
  check_on(lengths, logits, name);
  TORCH_CHECK(lengths.scalar_type() == at::kLong, "ds2 CTC: ", name, " must be int64, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == logits.size(0), "ds2 CTC: ", name, " must have shape (",
              logits.size(0), ",), got ", lengths.sizes());
}

void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.is_cuda(), "ds2 CTC: the cuda backend needs CUDA logits, got ", logits.device());
  TORCH_CHECK(logits.dim() == 3, "ds2 CTC: logits must be (B, T, V), got ", logits.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
              "ds2 CTC: logits must be float32, float16, bfloat16 or float64, got ", dtype);
  TORCH_CHECK(logits.size(0) * logits.size(1) < (int64_t(1) << 31), "ds2 CTC: B * T must stay below 2^31");
}

}  // namespace

std::vector<at::Tensor> forward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& input_lengths,
                                const at::Tensor& target_lengths, int64_t blank, bool need_grad) {
  check_logits(logits);
  check_on(labels, logits, "targets");
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.dim() == 2 && labels.size(0) == logits.size(0),
              "ds2 CTC: targets must be int64 (B, Lmax), got ", labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK(2 * labels.size(1) + 1 <= kMaxStates, "ds2 CTC: the cuda backend handles label sequences up to ",
              (kMaxStates - 1) / 2, " labels; the targets are ", labels.size(1), " wide");
  check_lengths(input_lengths, logits, "input_lengths");
  check_lengths(target_lengths, logits, "target_lengths");
  TORCH_CHECK(blank >= 0 && blank < logits.size(2), "ds2 CTC: blank=", blank, " is not a class index");
  return ctc_forward_cuda(logits.contiguous(), labels.contiguous(), input_lengths.contiguous(),
                          target_lengths.contiguous(), blank, need_grad);
}

at::Tensor backward(const at::Tensor& logits, const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                    const at::Tensor& lse, const at::Tensor& occupancy, const at::Tensor& sorted_state,
                    const at::Tensor& sorted_char, const at::Tensor& scale, int64_t blank) {
  check_logits(logits);
  check_lengths(input_lengths, logits, "input_lengths");
  check_lengths(target_lengths, logits, "target_lengths");
  TORCH_CHECK(occupancy.defined(), "ds2 CTC: backward needs the forward to have run with need_grad");
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const auto* tensor : {&lse, &occupancy, &scale}) {
    check_on(*tensor, logits, "saved state");
    TORCH_CHECK(tensor->scalar_type() == acc && tensor->is_contiguous(), "ds2 CTC: saved state has dtype ",
                tensor->scalar_type(), ", expected contiguous ", acc);
  }
  const int64_t batch = logits.size(0), frames = logits.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == batch, "ds2 CTC: scale must be (B,)");
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == batch && lse.size(1) == frames, "ds2 CTC: lse must be (B, T)");
  for (const auto* keys : {&sorted_state, &sorted_char}) {
    check_on(*keys, logits, "saved keys");
    TORCH_CHECK(keys->scalar_type() == at::kInt && keys->is_contiguous() && keys->dim() == 2 &&
                    keys->size(0) == batch && keys->size(1) == sorted_state.size(1),
                "ds2 CTC: saved keys must be contiguous int32 (B, W)");
  }
  TORCH_CHECK(occupancy.dim() == 3 && occupancy.size(0) == batch && occupancy.size(1) == frames &&
                  occupancy.size(2) == 2 * sorted_state.size(1) + 1,
              "ds2 CTC: occupancy must be (B, T, 2W + 1) for keys of width W");
  return ctc_backward_cuda(logits.contiguous(), input_lengths.contiguous(), target_lengths.contiguous(), lse,
                           occupancy, sorted_state, sorted_char, scale, blank);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ds2 CTC loss: CUDA kernels (DS2 appendix A.2)";
  m.def("forward", &forward, "losses (B,), lse, log occupancy, sorted keys", py::arg("logits"), py::arg("labels"),
        py::arg("input_lengths"), py::arg("target_lengths"), py::arg("blank"), py::arg("need_grad"));
  m.def("backward", &backward, "gradient w.r.t. the logits", py::arg("logits"), py::arg("input_lengths"),
        py::arg("target_lengths"), py::arg("lse"), py::arg("occupancy"), py::arg("sorted_state"),
        py::arg("sorted_char"), py::arg("scale"), py::arg("blank"));
}
