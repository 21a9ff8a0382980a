// Tensor: a JS handle on one torch::Tensor, with factories and host copies.
#pragma once
#include "common.h"

namespace tl {

// A JS typed array holding a copy of `host`, a contiguous CPU tensor (16-bit floats
// already widened).
Napi::Value hostArray(Napi::Env env, const torch::Tensor& host);

class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, torch::Tensor tensor);
  // The tensor behind a JS value, or a coded error when it is not a live Tensor.
  static torch::Tensor From(Napi::Env env, const Napi::Value& value);
  static bool IsTensor(Napi::Env env, const Napi::Value& value);

  explicit TensorWrap(const Napi::CallbackInfo& info);
  void Finalize(Napi::Env env) override;

 private:
  static Napi::Value FromArray(const Napi::CallbackInfo& info);
  static Napi::Value Full(const Napi::CallbackInfo& info);
  static Napi::Value Randn(const Napi::CallbackInfo& info);
  static Napi::Value Arange(const Napi::CallbackInfo& info);
  static Napi::Value ManualSeed(const Napi::CallbackInfo& info);

  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value Dtype(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value Numel(const Napi::CallbackInfo& info);
  Napi::Value ToTypedArray(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Item(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value ToAsync(const Napi::CallbackInfo& info);
  Napi::Value Rows(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  const torch::Tensor& live() const;
  // The tensor for a synchronous host read, refused for device tensors.
  const torch::Tensor& onHost(const char* what) const;
  void release(Napi::Env env);

  torch::Tensor tensor_;
  int64_t accountedBytes_ = 0;
};

}  // namespace tl
