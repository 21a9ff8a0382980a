// Precompiled for every translation unit: LibTorch's headers dominate build time.
#pragma once
#include <napi.h>
#include <torch/script.h>
#include <torch/torch.h>
