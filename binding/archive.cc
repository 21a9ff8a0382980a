// TorchScript archives: loading (with the traced-model fixes) and atomic saving.
#include "archive.h"
#include "layout.h"

#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>

#include "surgery.h"

namespace tl {
namespace {

namespace fs = std::filesystem;

// torch::jit::load's own messages for these cases are zip-reader internals; checking
// the file first lets users see what is actually wrong with it.
void checkFile(const std::string& path) {
  std::error_code ec;
  fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw CodedError("TORCHLITE_FILE_NOT_FOUND", "no such file: " + path);
  if (fs::is_directory(status))
    throw CodedError("TORCHLITE_IS_DIRECTORY", path + " is a directory, not a TorchScript .pt file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CodedError("TORCHLITE_FILE_UNREADABLE", "cannot open " + path + " for reading");
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, sizeof magic);
  if (in.gcount() == 0) throw CodedError("TORCHLITE_NOT_TORCHSCRIPT", path + " is empty");
  if (static_cast<unsigned char>(magic[0]) == 0x80)
    throw CodedError("TORCHLITE_NOT_TORCHSCRIPT",
                     path + " is a legacy pickle from torch.save(), not TorchScript; export the model with "
                            "torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path)");
  if (in.gcount() < 4 || std::string(magic, 4) != std::string("PK\x03\x04", 4))
    throw CodedError("TORCHLITE_NOT_TORCHSCRIPT", path + " is not a TorchScript archive (no zip signature)");
}

// The reader's own failures, by the first line of their message (what follows can quote
// the model's code, whose paths would match these phrases).
[[noreturn]] void explainLoadFailure(const std::string& path, const c10::Error& error) {
  std::string message = firstLine(error.what_without_backtrace());
  if (message.find("constants.pkl") != std::string::npos || message.find("code/") != std::string::npos)
    throw CodedError("TORCHLITE_NOT_TORCHSCRIPT",
                     path + " holds torch.save() data (a state_dict or pickled module), not TorchScript; export "
                            "the model with torch.jit.script(model).save(path) or torch.jit.trace(model, "
                            "example).save(path)");
  if (message.find("zip archive") != std::string::npos || message.find("central directory") != std::string::npos ||
      message.find("file read failed") != std::string::npos)
    throw CodedError("TORCHLITE_CORRUPT_FILE", path + " is a truncated or damaged archive");
  throw;
}

// The tracer records only the Python line of each op, never the column, while the
// TorchScript compiler records both; so a forward whose ops all sit at column 0 was
// traced. A loaded node's own range points into the archive's code/, so look through
// it to the range of the original Python source kept in the debug files.
bool hasTracedSourceRanges(const torch::jit::Module& module) {
  size_t ranged = 0;
  auto forward = module.find_method("forward");  // a module may export other methods only
  if (!forward) return false;
  for (const torch::jit::Node* node : forward->graph()->nodes()) {
    auto original = node->sourceRange().findSourceRangeThatGenerated();
    if (!original) continue;
    auto location = original->file_line_col();
    if (!location) continue;
    ++ranged;
    if (std::get<2>(*location) != 0) return false;
  }
  return ranged > 0;
}

// Tracing also freezes the `training` argument of normalisation and dropout calls into
// a constant, which scripting never does; this still works when debug info was stripped.
bool hasConstantTrainingFlags(const torch::jit::Module& module) {
  for (const torch::jit::Module& child : module.modules()) {
    for (const torch::jit::Method& method : child.get_methods()) {
      for (const torch::jit::Node* node : method.graph()->nodes()) {
        size_t flag = trainingFlagInput(node->kind().toQualString());
        if (flag != 0 && node->inputs().size() > flag &&
            node->input(flag)->node()->kind() == c10::prim::Constant)
          return true;
      }
    }
  }
  return false;
}

}  // namespace

ModelPtr loadArchive(const std::string& path, const torch::Device& device, const std::vector<std::string>& extraNames) {
  checkFile(path);
  torch::jit::ExtraFilesMap extra{{"torchlite.json", ""}};
  for (const std::string& name : extraNames) extra.emplace(name, "");
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, device, extra);
  } catch (const c10::Error& error) {
    explainLoadFailure(path, error);
  }
  auto state = std::make_shared<ModelState>(std::move(module), device);
  state->traced = hasTracedSourceRanges(state->module) || hasConstantTrainingFlags(state->module);
  state->metadata = extra["torchlite.json"];
  for (const std::string& name : extraNames)
    if (!extra[name].empty()) state->extras[name] = extra[name];
  if (state->traced) state->warnings = fixTracedTrainingFlags(state->module);
  return state;
}

namespace {

void syncPath(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) return;  // directories cannot be opened on some filesystems; best effort
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void writeAtomically(const std::string& path, const std::function<void(const std::string& temporary)>& write) {
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw CodedError("TORCHLITE_FILE_NOT_FOUND", "no such directory: " + dir.string());
  if (fs::is_directory(target, ec)) throw CodedError("TORCHLITE_IS_DIRECTORY", path + " is a directory");
  fs::path temp = dir / ("." + target.filename().string() + ".tmp-" + std::to_string(::getpid()));
  try {
    write(temp.string());
  } catch (const c10::Error& error) {
    fs::remove(temp, ec);
    throw CodedError("TORCHLITE_WRITE_FAILED", "cannot write " + path + ": " + error.what_without_backtrace());
  } catch (...) {
    fs::remove(temp, ec);
    throw;
  }
  syncPath(temp.string(), O_RDONLY);
  fs::rename(temp, target, ec);
  if (ec) {
    fs::remove(temp, ec);
    throw CodedError("TORCHLITE_WRITE_FAILED", "cannot write " + path + ": " + ec.message());
  }
  syncPath(dir.string(), O_RDONLY | O_DIRECTORY);
}

void saveArchive(ModelState& state, const std::string& path, const std::string& metadata,
                 const std::map<std::string, std::string>& extras) {
  writeAtomically(path, [&](const std::string& temporary) {
    torch::jit::ExtraFilesMap files(extras.begin(), extras.end());
    files["torchlite.json"] = metadata;
    // Saved in NCHW whatever the layout torchlite trains in: Python code that views a
    // loaded weight (w.view(-1)) would fail on channels-last strides.
    bool nhwc = state.channelsLast && setChannelsLast(state, false);
    try {
      state.module.save(temporary, files);
    } catch (...) {
      if (nhwc) setChannelsLast(state, true);
      throw;
    }
    if (nhwc) setChannelsLast(state, true);
  });
  state.metadata = metadata;
}

}  // namespace tl
