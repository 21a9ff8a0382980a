// Reading TorchScript archives, with a coded error for every way a file can be wrong.
#pragma once
#include "model.h"

namespace tl {

ModelPtr loadArchive(const std::string& path, const torch::Device& device);

// Writes the model with its metadata atomically: a temporary file beside the target is
// written, fsynced and renamed over it, so a crash never leaves a half-written model.
void saveArchive(ModelState& state, const std::string& path, const std::string& metadata);

}  // namespace tl
