// Weights by name, in and out of files: safetensors tensors read into a model (the header is
// parsed and matched in TypeScript; this reads the bytes on a lane), a model's tensors written
// as safetensors, and the zoo's placeholders filled with each layer's default initialisation.
#include <fstream>

#include "archive.h"
#include "layout.h"
#include "job.h"
#include "layers.h"
#include "model.h"

namespace tl {
namespace {

// The zoo's archives hold each parameter as a zero-stride view of one element: the shape
// without the data. Such a tensor cannot be written in place (its elements alias).
bool isPlaceholder(const torch::Tensor& t) {
  if (t.numel() <= 1) return false;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.stride(d) == 0 && t.size(d) > 1) return true;
  return false;
}

// The module that holds `path`'s last name, and that name.
torch::jit::Module ownerOf(const torch::jit::Module& root, const std::string& path, std::string& name) {
  torch::jit::Module owner = root;
  size_t start = 0;
  for (size_t dot = path.find('.'); dot != std::string::npos; start = dot + 1, dot = path.find('.', start))
    owner = owner.attr(path.substr(start, dot - start)).toModule();
  name = path.substr(start);
  return owner;
}

// Stores `value` as `path`: converted into the existing tensor where it has storage of its
// own (so that optimizers holding it keep working); as a new tensor where it is a placeholder,
// or where `keep` asks for the file's dtype.
void assign(torch::jit::Module& root, const std::string& path, const torch::Tensor& value, bool keep) {
  std::string name;
  torch::jit::Module owner = ownerOf(root, path, name);
  torch::Tensor current = owner.attr(name).toTensor();
  torch::NoGradGuard noGrad;
  if (!keep && !isPlaceholder(current)) {
    current.copy_(value);
    return;
  }
  torch::TensorOptions options = keep ? current.options().dtype(value.scalar_type()) : current.options();
  // The bytes just read become the parameter where dtype and device already fit: no second copy.
  torch::Tensor fresh = value.to(options, /*non_blocking=*/false, /*copy=*/false).contiguous();
  fresh.set_requires_grad(current.requires_grad() && fresh.is_floating_point());
  owner.setattr(name, fresh);
}

// A zoo placeholder's tensor as PyTorch's constructors draw it: nn.Linear and nn.ConvNd
// through kaimingInit (weight, then bias, as reset_parameters does), norms' weights 1 and
// running variances 1, nn.Embedding N(0, 1); N(0, 0.02) for other modules' parameters (class
// tokens, position embeddings) and zeros for their buffers.
int64_t materialize(torch::jit::Module& module) {
  int64_t filled = 0;
  for (const auto& item : module.named_modules()) {
    torch::jit::Module sub = item.value;
    std::string layer = sub.type()->name() ? sub.type()->name()->name() : "";
    auto is = [&](const char* kind) { return layer.find(kind) != std::string::npos; };
    std::map<std::string, torch::Tensor> fresh;
    std::map<std::string, bool> grads;
    for (const auto& p : sub.named_parameters(/*recurse=*/false)) grads[p.name] = p.value.requires_grad();
    auto placeholder = [&](const std::string& name) { return sub.hasattr(name) && sub.attr(name).isTensor() && isPlaceholder(sub.attr(name).toTensor()); };
    if ((is("Conv") || is("Linear")) && placeholder("weight")) {
      torch::Tensor weight = sub.attr("weight").toTensor();
      bool bias = placeholder("bias");
      auto [w, b] = kaimingInit(weight.sizes().vec(), bias);
      fresh["weight"] = w.to(weight.options());
      if (bias) fresh["bias"] = b.to(weight.options());
    }
    torch::NoGradGuard noGrad;
    auto fill = [&](const std::string& name, const torch::Tensor& like, bool parameter) {
      if (fresh.count(name) || !isPlaceholder(like)) return;
      torch::Tensor t = torch::empty(like.sizes(), like.options());
      if (is("Norm") && name == "weight") t.fill_(1);
      else if (is("BatchNorm") && name == "running_var") t.fill_(1);
      else if (is("Embedding") && name == "weight") t.normal_(0, 1);
      else if (parameter && t.is_floating_point()) t.normal_(0, 0.02);
      else t.zero_();
      fresh[name] = t;
    };
    for (const auto& p : sub.named_parameters(/*recurse=*/false)) fill(p.name, p.value, true);
    for (const auto& b : sub.named_buffers(/*recurse=*/false)) fill(b.name, b.value, false);
    for (auto& [name, t] : fresh) {
      if (grads.count(name)) t.set_requires_grad(grads[name]);
      sub.setattr(name, t);
    }
    filled += static_cast<int64_t>(fresh.size());
  }
  return filled;
}

// One tensor of a weights file: where its bytes are and what they hold.
struct WeightEntry {
  std::string name;
  std::string file;
  int64_t offset;
  int64_t bytes;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
  bool keep;  // the file's dtype rather than the model's
};

}  // namespace

Napi::Value ModelWrap::LoadWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    Napi::Array list = info[0].As<Napi::Array>();
    std::vector<WeightEntry> entries;
    for (uint32_t i = 0; i < list.Length(); ++i) {
      Napi::Object e = list.Get(i).As<Napi::Object>();
      WeightEntry entry{e.Get("name").As<Napi::String>().Utf8Value(), e.Get("file").As<Napi::String>().Utf8Value(),
                        e.Get("offset").As<Napi::Number>().Int64Value(), e.Get("bytes").As<Napi::Number>().Int64Value(),
                        parseDtype(e.Get("dtype").As<Napi::String>().Utf8Value()), {}, e.Get("keep").As<Napi::Boolean>().Value()};
      Napi::Array shape = e.Get("shape").As<Napi::Array>();
      for (uint32_t d = 0; d < shape.Length(); ++d) entry.shape.push_back(shape.Get(d).As<Napi::Number>().Int64Value());
      entries.push_back(std::move(entry));
    }
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, entries] {
          std::lock_guard<std::mutex> lock(state->mutex);
          // One tensor at a time: the extra memory is the largest tensor, not the file.
          std::ifstream in;
          std::string open;
          for (const WeightEntry& entry : entries) {
            if (entry.file != open) {
              in = std::ifstream(entry.file, std::ios::binary);
              if (!in) throw CodedError("TORCHLITE_FILE_NOT_FOUND", "cannot open " + entry.file);
              open = entry.file;
            }
            torch::Tensor raw = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.dtype));
            if (raw.nbytes() != static_cast<size_t>(entry.bytes))
              throw CodedError("TORCHLITE_CORRUPT_FILE", entry.file + ": '" + entry.name + "' holds " + std::to_string(entry.bytes) +
                                                             " bytes, not the " + std::to_string(raw.nbytes()) + " its shape and dtype need");
            in.seekg(entry.offset);
            in.read(static_cast<char*>(raw.data_ptr()), entry.bytes);
            if (in.gcount() != entry.bytes) throw CodedError("TORCHLITE_CORRUPT_FILE", entry.file + " ends inside '" + entry.name + "'");
            assign(state->module, entry.name, raw, entry.keep);
          }
          state->generation++;  // optimizers built before hold the old placeholders' identities
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

Napi::Value ModelWrap::SaveWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    std::string path = info[0].As<Napi::String>().Utf8Value();
    Napi::Buffer<char> header = info[1].As<Napi::Buffer<char>>();
    std::string headerBytes(header.Data(), header.Length());
    Napi::Array list = info[2].As<Napi::Array>();
    std::vector<std::string> names;
    for (uint32_t i = 0; i < list.Length(); ++i) names.push_back(list.Get(i).As<Napi::String>().Utf8Value());
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, path, headerBytes, names] {
          std::lock_guard<std::mutex> lock(state->mutex);
          std::map<std::string, torch::Tensor> tensors;
          for (const auto& p : state->module.named_parameters()) tensors.emplace(p.name, p.value);
          for (const auto& b : state->module.named_buffers()) tensors.emplace(b.name, b.value);
          writeAtomically(path, [&](const std::string& temporary) {
            std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
            if (!out) throw CodedError("TORCHLITE_WRITE_FAILED", "cannot write " + temporary);
            uint64_t size = headerBytes.size();
            char prefix[8];
            for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((size >> (8 * i)) & 0xff);  // little-endian u64
            out.write(prefix, 8);
            out.write(headerBytes.data(), static_cast<std::streamsize>(headerBytes.size()));
            for (const std::string& name : names) {
              torch::Tensor t = tensors.at(name).detach().to(torch::kCPU).contiguous();
              out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
            }
            out.flush();
            if (!out) throw CodedError("TORCHLITE_WRITE_FAILED", "writing " + path + " failed (disk full?)");
          });
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

Napi::Value ModelWrap::Reshape(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    // A zoo architecture sized from a checkpoint's config: its placeholders take the config's
    // shapes (still without data), and its sizing attributes (heads, epsilons, dropout rates)
    // the config's values, before the weights arrive.
    Napi::Object shapes = info[0].As<Napi::Object>();
    Napi::Array names = shapes.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); ++i) {
      std::string path = names.Get(i).As<Napi::String>().Utf8Value();
      std::string name;
      torch::jit::Module owner = ownerOf(state.module, path, name);
      if (!owner.hasattr(name) || !owner.attr(name).isTensor()) throw CodedError("TORCHLITE_BAD_STATE", "the model has no tensor '" + path + "'");
      torch::Tensor current = owner.attr(name).toTensor();
      if (!isPlaceholder(current) && current.numel() > 1) throw CodedError("TORCHLITE_BAD_STATE", "'" + path + "' already holds data; only a zoo placeholder can be resized");
      Napi::Array dims = shapes.Get(path).As<Napi::Array>();
      std::vector<int64_t> shape;
      for (uint32_t d = 0; d < dims.Length(); ++d) shape.push_back(dims.Get(d).As<Napi::Number>().Int64Value());
      torch::Tensor fresh = torch::zeros({}, current.options().requires_grad(false)).expand(shape);
      if (current.requires_grad()) fresh = fresh.detach().requires_grad_(true);
      owner.setattr(name, fresh);
    }
    Napi::Object values = info[1].As<Napi::Object>();
    Napi::Array keys = values.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      std::string path = keys.Get(i).As<Napi::String>().Utf8Value();
      std::string name;
      torch::jit::Module owner = ownerOf(state.module, path, name);
      if (!owner.hasattr(name)) throw CodedError("TORCHLITE_BAD_STATE", "the model has no attribute '" + path + "'");
      c10::IValue current = owner.attr(name);
      double value = values.Get(path).As<Napi::Number>().DoubleValue();
      if (current.isInt()) owner.setattr(name, static_cast<int64_t>(value));
      else if (current.isDouble()) owner.setattr(name, value);
      else throw CodedError("TORCHLITE_BAD_STATE", "'" + path + "' is not a number attribute");
    }
    // Only a freshly loaded zoo archive is resized, before any forward: no execution plan exists yet.
    state.generation++;
    return env.Undefined();
  });
}

Napi::Value ModelWrap::Materialize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    // The layout is chosen here, on the lane, once no placeholder is left: converting a large
    // model to channels-last takes milliseconds the JS thread should not spend.
    std::string layout = info[0].As<Napi::String>().Utf8Value();  // 'auto', 'on' or 'off'
    return Job<int64_t>::Start(
        env, {state->device, Priority::Training},
        [state, layout] {
          std::lock_guard<std::mutex> lock(state->mutex);
          int64_t filled = materialize(state->module);
          if (filled > 0) state->generation++;
          if (layout != "off") chooseChannelsLast(*state, true, layout == "auto");
          return filled;
        },
        [](Napi::Env env, int64_t& filled) { return Napi::Number::New(env, static_cast<double>(filled)); });
  });
}

}  // namespace tl
