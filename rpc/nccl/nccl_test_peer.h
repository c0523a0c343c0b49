// The other end of an NCCL KV link in the GPU tests and the benchmark: the
// same executable started again as a child process with --nccl-peer, playing
// a prefill (sender) or a decode worker (receiver) on its own GPU. Its stdin
// and stdout, one line per event, stand in for the gRPC control stream:
//
//   child -> parent   ready | sent T L | done T SECONDS BYTES | verified T MISMATCHES | error T MESSAGE
//   parent -> child   sent T L   (to a receiver: layer L of transfer T is on its way)
//                     go         (to a sender in step mode: send the next layer)
//
// A child that loses its stdin (the parent died) exits.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rpc/nccl/nccl_kv_link.h"

namespace seer::nccl_test {

struct PeerConfig {
  std::string role = "recv";  // "send" or "recv"
  int device = 1;
  std::string unique_id_hex;
  int layers = 4, heads = 8, head_dim = 128;
  std::vector<int> seq_lens = {1000};  // one transfer per entry
  int extra_capacity = 0;  // receiver: capacity = seq_len + extra_capacity
  bool whole = false;  // NcclKvSplit::kWhole
  bool step = false;  // sender: wait for "go" before each layer
  double stall_seconds = 3.0, setup_seconds = 30.0;
  uint32_t salt = 1;  // transfer T uses salt + T
  int first_token = 0;  // each transfer moves tokens [first_token, seq_len)
};

std::vector<std::string> PeerArgv(const PeerConfig& c);
// main(): `if (argc > 1 && std::string(argv[1]) == "--nccl-peer") return RunPeer(argc, argv);`
int RunPeer(int argc, char** argv);

std::string Hex(const std::string& bytes);
std::string Unhex(const std::string& hex);

// A child process running this executable with --nccl-peer.
class PeerProcess {
 public:
  ~PeerProcess();  // kills and reaps the child if still running
  // Null (and *error) when the child could not be started.
  static std::unique_ptr<PeerProcess> Start(const PeerConfig& c, std::string* error);
  // The next line from the child, or nullopt after `timeout_seconds` or at EOF.
  std::optional<std::string> ReadLine(double timeout_seconds);
  // Reads lines until one starts with `prefix`; nullopt on timeout/EOF.
  std::optional<std::string> Expect(const std::string& prefix, double timeout_seconds);
  bool WriteLine(const std::string& line);
  void Kill();  // SIGKILL
  // Exit status (or -signal); waits up to `timeout_seconds`, nullopt if still running.
  std::optional<int> Wait(double timeout_seconds);
  pid_t pid() const { return pid_; }

 private:
  PeerProcess() = default;
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;  // our ends: the child's stdin, the child's stdout
  std::string buffer_;
  bool reaped_ = false;
  int status_ = 0;
};

}  // namespace seer::nccl_test
