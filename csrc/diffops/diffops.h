#pragma once
// diffops: differential operators computed exactly with LibTorch autograd.
//
// Conventions shared by every operator: x holds points, shape batch + (d,) (batch may be empty:
// one point); a field u computed from x has shape batch + comp; points are independent (u[n]
// depends on x[n] only). Results keep u's shape and append derivative axes. Bad arguments throw
// c10::ValueError; a broken graph throws c10::Error; messages start with the operator's name.

#include "diffops/derivatives.h"
#include "diffops/divergence.h"
#include "diffops/explain.h"
#include "diffops/function.h"
#include "diffops/gradient.h"
#include "diffops/laplacian.h"
#include "diffops/options.h"
#include "diffops/partial.h"
#include "diffops/version.h"
