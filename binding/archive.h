// Reading TorchScript archives, with a coded error for every way a file can be wrong.
#pragma once
#include "model.h"

namespace tl {

// `extraNames` are further extra files to read into state->extras (absent ones stay out).
ModelPtr loadArchive(const std::string& path, const torch::Device& device, const std::vector<std::string>& extraNames);

// Writes the model with its metadata atomically: a temporary file beside the target is
// written, fsynced and renamed over it, so a crash never leaves a half-written model.
void saveArchive(ModelState& state, const std::string& path, const std::string& metadata,
                 const std::map<std::string, std::string>& extras);

}  // namespace tl
