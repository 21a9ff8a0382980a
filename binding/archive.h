// Reading TorchScript archives, with a coded error for every way a file can be wrong.
#pragma once
#include "model.h"

namespace tl {

ModelPtr loadArchive(const std::string& path, const torch::Device& device);

}  // namespace tl
