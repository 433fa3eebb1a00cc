// Runs the CTC kernels of cuda/ctc_device.cuh on emulated threads (emulate.h), float32.
//
//   run_kernels INPUT OUTPUT
// INPUT: int32 B, T, V, W, blank; float32 logits (B,T,V); int64 labels (B,W), input_lengths (B),
// target_lengths (B); float32 scale (B). OUTPUT: float32 losses (B), then gradient (B,T,V).
// Launch configuration as in cuda/ctc_kernel.cu; scale is zeroed where the loss is not finite,
// as ds2/ctc.py does. Work buffers start as NaN, as uninitialized GPU memory might.
#include <cstdio>
#include <limits>

#include "emulate.h"
#include "ctc_device.cuh"

template <typename T>
static bool read(FILE* file, std::vector<T>& values) {
  return std::fread(values.data(), sizeof(T), values.size(), file) == values.size();
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* in = std::fopen(argv[1], "rb");
  if (!in) return 2;
  std::vector<int32_t> header(5);
  if (!read(in, header)) return 2;
  const int batch = header[0], frames = header[1], vocab = header[2], width = header[3], blank = header[4];
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> logits(size_t(batch) * frames * vocab), scale(batch);
  std::vector<int64_t> labels(size_t(batch) * width), input_lengths(batch), target_lengths(batch);
  if (!read(in, logits) || !read(in, labels) || !read(in, input_lengths) || !read(in, target_lengths) || !read(in, scale))
    return 2;
  std::fclose(in);

  const int max_states = 2 * width + 1;
  std::vector<float> lse(size_t(batch) * frames, nan), log_emit(size_t(batch) * frames * (width + 1), nan);
  std::vector<float> alpha(size_t(batch) * frames * max_states, nan), losses(batch, nan);
  std::vector<float> grad(logits.size(), nan);
  std::vector<int> sorted_state(size_t(batch) * width, -1), sorted_char(size_t(batch) * width, -1);
  const unsigned rows = unsigned(batch) * frames;
  const unsigned row_blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const unsigned threads = state_threads(max_states);
  const size_t shared = 2 * size_t(max_states) * sizeof(float);

  launch(row_blocks, kRowsPerBlock * kWarp, 0, [&] {
    lse_gather_kernel<float, float>(logits.data(), labels.data(), input_lengths.data(), target_lengths.data(), batch,
                                    frames, vocab, width, blank, lse.data(), log_emit.data());
  });
  launch(batch, threads, shared, [&] {
    alpha_kernel<float>(log_emit.data(), labels.data(), input_lengths.data(), target_lengths.data(), frames, width,
                        alpha.data(), losses.data());
  });
  launch(batch, threads, shared, [&] {
    beta_kernel<float>(log_emit.data(), labels.data(), input_lengths.data(), target_lengths.data(), losses.data(),
                       frames, width, alpha.data());
  });
  if (width > 0) {
    launch(batch, 128, 0, [&] {
      sort_keys_kernel(labels.data(), target_lengths.data(), width, sorted_state.data(), sorted_char.data());
    });
  }
  for (int b = 0; b < batch; ++b) {
    if (!std::isfinite(losses[b])) scale[b] = 0.0f;
  }
  launch(row_blocks, kRowsPerBlock * kWarp, 0, [&] {
    epilogue_kernel<float, float>(logits.data(), input_lengths.data(), target_lengths.data(), lse.data(), alpha.data(),
                                  sorted_state.data(), sorted_char.data(), scale.data(), batch, frames, vocab, width,
                                  blank, grad.data());
  });

  FILE* out = std::fopen(argv[2], "wb");
  if (!out) return 2;
  std::fwrite(losses.data(), sizeof(float), losses.size(), out);
  std::fwrite(grad.data(), sizeof(float), grad.size(), out);
  std::fclose(out);
  return 0;
}
