#pragma once
// The training loop the PINN examples share: `steps` optimizer steps on loss_fn(), the loss printed
// ten times on the way; returns the first and last loss and the seconds taken.

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>

struct Training {
  double first = 0, last = 0, seconds = 0;
};

template <typename Loss>
Training train(torch::optim::Optimizer& opt, const Loss& loss_fn, int64_t steps) {
  Training out;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    opt.zero_grad();
    auto loss = loss_fn();
    loss.backward();
    opt.step();
    out.last = loss.template item<double>();
    if (step == 0) out.first = out.last;
    if (step % std::max<int64_t>(1, steps / 10) == 0 || step + 1 == steps)
      std::printf("step %5lld  loss %.4e\n", static_cast<long long>(step), out.last);
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}
