// The rendezvous: the TCPStore, every rank's check-in, and the Gloo (and NCCL) group built
// on it, as one job (the store and Gloo's set-up block until the peers arrive).
#include "distributed/group.h"

namespace tl {

#ifdef TORCHLITE_C10D
namespace {

std::string bytesOf(const std::vector<uint8_t>& value) { return std::string(value.begin(), value.end()); }
std::vector<uint8_t> bytesOf(const std::string& value) { return std::vector<uint8_t>(value.begin(), value.end()); }

struct InitOptions {
  int rank = 0;
  int size = 0;
  std::string host;
  int port = 0;
  std::chrono::milliseconds timeout{0};
  std::chrono::milliseconds initTimeout{0};
  int threads = 0;
  std::string agentPrefix;  // torchrun's agent store: every rank a client, under this prefix
  std::vector<std::string> interfaces;
  bool nccl = false;  // beside Gloo, for CUDA tensors
};

bool isLoopback(const std::string& host) { return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1"; }

// The store: rank 0 serves it (unless torchrun's agent already does), everyone connects.
c10::intrusive_ptr<c10d::Store> connectStore(const InitOptions& o, const std::string& address) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(o.port);
  options.isServer = o.agentPrefix.empty() && o.rank == 0;
  options.numWorkers = static_cast<size_t>(o.size);
  options.waitWorkers = false;  // joining is checked below, with errors that name the missing ranks
  options.timeout = o.initTimeout;
  try {
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(o.host, options);
    if (!o.agentPrefix.empty()) store = c10::make_intrusive<c10d::PrefixStore>(o.agentPrefix, store);
    return store;
  } catch (const std::exception& e) {
    std::string cause = messageOf(e);
    if (contains(cause, "already in use") || contains(cause, "failed to listen") || contains(cause, "bind"))
      throw CodedError("TORCHLITE_DIST_PORT_IN_USE", "rank 0 cannot serve the rendezvous on " + address +
                                                         ": the port is in use (another job, or an earlier run still alive). Pass another "
                                                         "`masterPort` (MASTER_PORT, or `torchlite run --master-port`). (" + cause + ")");
    if (contains(cause, "imed out") || contains(cause, "refused"))
      throw CodedError("TORCHLITE_DIST_TIMEOUT", "rank " + std::to_string(o.rank) + " could not reach the rendezvous at " + address +
                                                     " within " + seconds(o.initTimeout) + ": start rank 0, and check MASTER_ADDR and "
                                                     "MASTER_PORT (and the firewall) on every machine. (" + cause + ")");
    throw CodedError("TORCHLITE_DIST_ERROR", "the rendezvous at " + address + " failed: " + cause);
  }
}

// Every rank announces itself and its world size; rank 0 checks them as they arrive and
// posts a verdict the others wait for, so a mismatch fails everywhere at once instead of
// leaving ranks waiting for peers that will never come.
void rendezvous(c10d::Store& store, const InitOptions& o, const std::string& address) {
  const std::string me = std::to_string(o.rank);
  if (store.add("torchlite/joined/" + me, 1) > 1)
    throw CodedError("TORCHLITE_DIST_BAD_RANK", "two processes joined " + address + " as rank " + me +
                                                    ": give every process its own RANK (torchlite run does)");
  store.set("torchlite/world/" + me, bytesOf(std::to_string(o.size)));
  auto deadline = std::chrono::steady_clock::now() + o.initTimeout;
  if (o.rank == 0) {
    std::string verdict = "ok";
    std::vector<bool> seen(o.size, false);
    seen[0] = true;
    for (int left = o.size - 1; left > 0 && verdict == "ok";) {
      for (int r = 1; r < o.size && verdict == "ok"; ++r) {
        if (seen[r] || !store.check({"torchlite/world/" + std::to_string(r)})) continue;
        seen[r] = true;
        --left;
        std::string theirs = bytesOf(store.get("torchlite/world/" + std::to_string(r)));
        if (theirs != std::to_string(o.size))
          verdict = "the ranks disagree on the world size: rank 0 has " + std::to_string(o.size) + ", rank " + std::to_string(r) +
                    " has " + theirs + "; give every process the same WORLD_SIZE";
      }
      if (left == 0 || verdict != "ok") break;
      if (std::chrono::steady_clock::now() > deadline) {
        std::string missing;
        for (int r = 1; r < o.size; ++r)
          if (!seen[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        verdict = "rank(s) " + missing + " did not join " + address + " within " + seconds(o.initTimeout) + " (world size " +
                  std::to_string(o.size) + "): start them, or lower WORLD_SIZE";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    store.set("torchlite/verdict", bytesOf(verdict));
    if (verdict == "ok") return;
    // This process serves the store: it stays until the ranks that joined have read why.
    int joined = static_cast<int>(std::count(seen.begin(), seen.end(), true)) - 1;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (store.add("torchlite/verdict-read", 0) < joined && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    throw CodedError(verdict.rfind("rank(s)", 0) == 0 ? "TORCHLITE_DIST_TIMEOUT" : "TORCHLITE_DIST_WORLD_MISMATCH", verdict);
  }
  try {
    // Rank 0 gives the verdict at its own deadline at the latest, which may be later than ours.
    store.wait({"torchlite/verdict"}, o.initTimeout + std::chrono::seconds(10));
  } catch (const std::exception&) {
    throw CodedError("TORCHLITE_DIST_TIMEOUT", "rank " + me + " joined " + address + " but rank 0 did not confirm the group within " +
                                                   seconds(o.initTimeout) + ": is a rank missing?");
  }
  std::string verdict = bytesOf(store.get("torchlite/verdict"));
  store.add("torchlite/verdict-read", 1);
  if (verdict.rfind("rank(s)", 0) == 0) throw CodedError("TORCHLITE_DIST_TIMEOUT", verdict);
  if (verdict != "ok") throw CodedError("TORCHLITE_DIST_WORLD_MISMATCH", verdict);
}

GroupPtr initGroup(const InitOptions& o) {
  auto group = std::make_shared<GroupState>();
  group->rank = o.rank;
  group->size = o.size;
  group->timeout = o.timeout;
  group->address = o.host + ":" + std::to_string(o.port);
  c10::intrusive_ptr<c10d::Store> store = connectStore(o, group->address);
  try {
    rendezvous(*store, o, group->address);
  } catch (const CodedError&) {
    throw;
  } catch (const std::exception& e) {
    throw CodedError("TORCHLITE_DIST_PEER_LOST", "rank " + std::to_string(o.rank) + " lost the rendezvous at " + group->address +
                                                     " before the group formed: rank 0 (which serves it) exited or crashed. (" + messageOf(e) + ")");
  }
  store->setTimeout(o.timeout);
  auto options = c10d::ProcessGroupGloo::Options::create(o.timeout);
  // Python does this in its bindings, not in LibTorch: GLOO_SOCKET_IFNAME's interfaces,
  // else the address the host name resolves to. On loopback rendezvous that address may be
  // a LAN one the test sandbox cannot use, so loopback stays loopback.
  for (const std::string& name : o.interfaces) options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
  if (options->devices.empty())
    options->devices.push_back(isLoopback(o.host) ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                                  : c10d::ProcessGroupGloo::createDefaultDevice());
  options->threads = o.threads;
  try {
    group->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("torchlite_pg/", store), o.rank,
                                                              o.size, options);
  } catch (const std::exception& e) {
    throw explain(*group, messageOf(e), "the Gloo connection set-up");
  }
  if (o.nccl) {
#ifdef TORCHLITE_WITH_NCCL
    // NCCL connects lazily, on the first collective of each device, so this returns at once.
    auto nccl = c10d::ProcessGroupNCCL::Options::create();
    nccl->timeout = o.timeout;
    try {
      group->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("torchlite_nccl/", store),
                                                                o.rank, o.size, nccl);
    } catch (const std::exception& e) {
      throw explain(*group, messageOf(e), "the NCCL set-up");
    }
#else
    throw CodedError("TORCHLITE_DIST_UNAVAILABLE", "this build of torchlite has no NCCL; use backend 'gloo'");
#endif
  }
  group->store = store;
  return group;
}

// Every field comes from distributed.ts, which owns the defaults (and torchrun's environment).
InitOptions parseInit(const Baton& baton) {
  InitOptions o;
  o.rank = static_cast<int>(baton.integer("rank"));
  o.size = static_cast<int>(baton.integer("worldSize"));
  o.host = baton.string("masterAddr");
  o.port = static_cast<int>(baton.integer("masterPort"));
  o.timeout = std::chrono::milliseconds(baton.integer("timeoutMs"));
  o.initTimeout = std::chrono::milliseconds(baton.integer("initTimeoutMs"));
  o.threads = static_cast<int>(baton.integer("threads"));
  o.agentPrefix = baton.string("agentPrefix");
  o.nccl = baton.boolean("nccl");
  Napi::Array names = baton.value("interfaces").As<Napi::Array>();
  for (uint32_t i = 0; i < names.Length(); ++i) o.interfaces.push_back(names.Get(i).As<Napi::String>().Utf8Value());
  return o;
}

}  // namespace
#endif  // TORCHLITE_C10D

// The store's constructor and Gloo's connection set-up block until the peers arrive, so
// the whole rendezvous is a job.
Napi::Value GroupWrap::Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
#ifdef TORCHLITE_C10D
    InitOptions options = parseInit(Baton(info[0].As<Napi::Object>(), "distributed.init options"));
    return Job<GroupPtr>::Start(
        env, {torch::Device(torch::kCPU), Priority::Training}, [options] { return initGroup(options); },
        [](Napi::Env env, GroupPtr& group) -> Napi::Value {
          return addonData(env).groupClass.New({Napi::External<GroupPtr>::New(env, &group)});
        });
#else
    unavailable();
#endif
  });
}
}  // namespace tl
