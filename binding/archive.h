// Reading TorchScript archives, with a coded error for every way a file can be wrong.
#pragma once
#include <functional>

#include "model.h"

namespace tl {

// `extraNames` are further extra files to read into state->extras (absent ones stay out).
ModelPtr loadArchive(const std::string& path, const torch::Device& device, const std::vector<std::string>& extraNames);

// Writes `path` atomically: `write` fills a temporary file beside it, which is fsynced and
// renamed over it, so a crash never leaves a half-written file. A missing folder, a folder in
// the way and a failed write are coded errors; the temporary file never outlives a failure.
void writeAtomically(const std::string& path, const std::function<void(const std::string& temporary)>& write);

// Writes the model with its metadata atomically (writeAtomically).
void saveArchive(ModelState& state, const std::string& path, const std::string& metadata,
                 const std::map<std::string, std::string>& extras);

}  // namespace tl
