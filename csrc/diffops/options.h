#pragma once
// Options shared by every diffops operator, in LibTorch's builder style:
//   diffops::laplacian(u, x, diffops::Options().create_graph(false));

#include <torch/arg.h>

namespace diffops {

struct Options {
  /// Keep the graph of the result so it can be differentiated again or trained on
  /// (a PINN loss built from it back-propagates to the network's parameters).
  /// With false the result is a plain tensor and intermediate graphs are freed early.
  TORCH_ARG(bool, create_graph) = true;
};

}  // namespace diffops
