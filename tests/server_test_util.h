// Helpers for the service tests: spawning the real server binaries on port 0,
// running the seer CLI, scraping /metrics over HTTP, health checks, and
// writing random checkpoints big enough to be slow.
#pragma once

#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "base/status.h"
#include "engine/engine.h"
#include "formats/safetensors.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/fixture_reader.h"

namespace seer::testing {

using namespace std::chrono_literals;

// The servers' binaries: this build's, or $SEER_BIN_DIR's (a bundle on a GPU host).
inline std::string Bin(const std::string& name) {
  const char* dir = std::getenv("SEER_BIN_DIR");
  return std::string(dir != nullptr && *dir != 0 ? dir : SEER_BIN_DIR) + "/" + name;
}
using fixtures::Path;  // the committed fixtures (tests/fixture_reader.h)

inline std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path dir = std::filesystem::path(base ? base : std::filesystem::temp_directory_path().string()) /
                              ("seer_server_" + std::to_string(getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// In a forked child: die with the test process (a crashed or timed-out test
// must not leave servers running that hold ctest's output pipe open). The
// signal comes when the forking thread exits, so fork on a thread that lives
// as long as the child is needed.
inline void DieWithParent(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);  // the parent was already gone
}

inline std::vector<char*> Argv(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return argv;
}

// A server binary running on loopback. Parses the startup line
//   "<program> listening on HOST:PORT metrics on HOST:PORT"
// and waits for "<program> ready" (the model has loaded). Its stderr (the
// JSON log) is kept line by line too.
class ServerProcess {
 public:
  // `env` entries ("NAME=value") are added to this process's environment.
  ServerProcess(const std::string& binary, std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), binary);
    for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
    int out[2], err[2];
    if (pipe(out) != 0 || pipe(err) != 0) return;
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      DieWithParent(parent);
      dup2(out[1], STDOUT_FILENO);
      dup2(err[1], STDERR_FILENO);
      close(out[0]);
      close(out[1]);
      close(err[0]);
      close(err[1]);
      std::vector<char*> argv = Argv(args);
      std::vector<char*> envp = Argv(env);
      execve(argv[0], argv.data(), envp.data());
      std::perror("execve");
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    reader_ = std::thread([this] { ReadLines(out_fd_, &lines_, &eof_); });
    err_reader_ = std::thread([this] { ReadLines(err_fd_, &err_lines_, &err_eof_); });
  }

  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (reader_.joinable()) reader_.join();
    if (err_reader_.joinable()) err_reader_.join();
    if (out_fd_ >= 0) close(out_fd_);
    if (err_fd_ >= 0) close(err_fd_);
  }

  // Waits for the listening line and the ready line.
  ::testing::AssertionResult Start(std::chrono::seconds timeout = 60s) {
    if (pid_ <= 0) return ::testing::AssertionFailure() << "fork failed";
    std::optional<std::string> line = WaitForLine(" listening on ", timeout);
    if (!line) return ::testing::AssertionFailure() << "no 'listening on' line; output:\n" << Output();
    std::istringstream in(*line);
    std::string program, w1, w2, w3, w4;
    in >> program >> w1 >> w2 >> grpc_ >> w3 >> w4 >> metrics_;
    if (grpc_.empty() || metrics_.empty()) return ::testing::AssertionFailure() << "cannot parse: " << *line;
    if (!WaitForLine(" ready: ", timeout)) return ::testing::AssertionFailure() << "never ready:\n" << Output();
    return ::testing::AssertionSuccess();
  }

  const std::string& grpc_address() const { return grpc_; }
  const std::string& metrics_address() const { return metrics_; }
  // seer-decode's --http address, from its "http on HOST:PORT" line; empty
  // without one.
  std::string http_address() {
    std::optional<std::string> line = WaitForLine(" http on ", std::chrono::seconds(0));
    if (!line) return "";
    const size_t at = line->find(" http on ") + 9;
    return line->substr(at, line->find(' ', at) - at);
  }
  pid_t pid() const { return pid_; }

  void Signal(int sig) {
    if (pid_ > 0 && !exited_) kill(pid_, sig);
  }
  // Whether the process has ended (reaping it), without waiting; its status
  // (as Wait returns it) in *code.
  bool Exited(int* code = nullptr) {
    if (!exited_ && pid_ > 0) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    if (code != nullptr) *code = exit_code_;
    return exited_;
  }
  // The exit status (WEXITSTATUS, or 128 + signal). A process still running
  // after `timeout` is killed, and the result is -2.
  int Wait(std::chrono::milliseconds timeout = 120s) {
    if (exited_ || pid_ <= 0) return exit_code_;
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    bool timed_out = false;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        timed_out = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    exited_ = true;
    exit_code_ = timed_out ? -2 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exit_code_;
  }

  std::optional<std::string> WaitForLine(const std::string& needle, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<std::string> found;
    cv_.wait_for(lock, timeout, [&] {
      for (const auto& l : lines_)
        if (l.find(needle) != std::string::npos) {
          found = l;
          return true;
        }
      return eof_;
    });
    return found;
  }

  std::string Output() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s;
    for (const auto& l : lines_) s += l + "\n";
    for (const auto& l : err_lines_) s += "stderr: " + l + "\n";
    return s;
  }

  // The stderr lines so far.
  std::vector<std::string> ErrLines() const {
    std::lock_guard<std::mutex> lock(mu_);
    return err_lines_;
  }
  // Waits until `count` stderr lines contain every one of `needles`.
  bool WaitForErrLines(const std::vector<std::string>& needles, size_t count, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      size_t n = 0;
      for (const auto& l : err_lines_) {
        bool all = true;
        for (const auto& needle : needles) all = all && l.find(needle) != std::string::npos;
        n += all ? 1 : 0;
      }
      return n >= count || err_eof_;
    });
  }

 private:
  void ReadLines(int fd, std::vector<std::string>* lines, bool* eof) {
    std::string partial;
    char buf[4096];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      partial.append(buf, static_cast<size_t>(n));
      size_t nl;
      while ((nl = partial.find('\n')) != std::string::npos) {
        std::lock_guard<std::mutex> lock(mu_);
        lines->push_back(partial.substr(0, nl));
        partial.erase(0, nl + 1);
        cv_.notify_all();
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    *eof = true;
    cv_.notify_all();
  }

  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
  std::string grpc_, metrics_;
  std::thread reader_, err_reader_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_, err_lines_;
  bool eof_ = false, err_eof_ = false;
};

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs a program to completion, capturing stdout and stderr. One still
// running after `timeout` is killed (exit code 128 + SIGKILL).
inline CommandResult RunCommand(std::vector<std::string> args, std::chrono::seconds timeout = 300s) {
  CommandResult r;
  int out[2], err[2];
  if (pipe(out) != 0 || pipe(err) != 0) return r;
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    DieWithParent(parent);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    close(out[0]);
    close(out[1]);
    close(err[0]);
    close(err[1]);
    std::vector<char*> argv = Argv(args);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  std::mutex mu;
  std::condition_variable cv;
  bool reaped = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, timeout, [&] { return reaped; })) kill(pid, SIGKILL);
  });
  std::thread drain_err([&] {
    char buf[4096];
    ssize_t n;
    while ((n = read(err[0], buf, sizeof(buf))) > 0) r.err.append(buf, static_cast<size_t>(n));
  });
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) r.out.append(buf, static_cast<size_t>(n));
  drain_err.join();
  close(out[0]);
  close(err[0]);
  // Wait for the exit without reaping, so the watchdog never signals a
  // reused pid; then reap.
  siginfo_t info{};
  waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT);
  {
    std::lock_guard<std::mutex> lock(mu);
    reaped = true;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  cv.notify_all();
  watchdog.join();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// A TCP connection to host:port whose reads and writes give up after 10 s
// (a hung server fails the request, not the test run).
inline StatusOr<int> ConnectTcp(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  const std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return Unavailable("resolve " + host_port);
  const int fd = socket(res->ai_family, SOCK_STREAM, 0);
  const timeval io_timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &io_timeout, sizeof(io_timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &io_timeout, sizeof(io_timeout));
  const bool connected = connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  if (!connected) {
    close(fd);
    return Unavailable("connect " + host_port);
  }
  return fd;
}

// The local port of a connected socket (what the server sees as its peer's).
inline int LocalPort(int fd) {
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) return 0;
  return ntohs(local.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&local)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&local)->sin_port);
}

// An HTTP/1.0 request line, host header and (for a body) a JSON body.
inline std::string HttpRequestText(const std::string& host_port, const std::string& method, const std::string& path,
                                   const std::string& body) {
  std::string req = method + " " + path + " HTTP/1.0\r\nHost: " + host_port + "\r\n";
  if (!body.empty() || method == "POST")
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return req + "\r\n" + body;
}

// GET (or another method, with `body`) http://host:port/path with a plain
// socket; the body on 200. `local_port`: the port the request came from.
inline StatusOr<std::string> HttpRequest(const std::string& host_port, const std::string& method,
                                         const std::string& path, const std::string& body = "",
                                         int* local_port = nullptr) {
  SEER_ASSIGN_OR_RETURN(const int fd, ConnectTcp(host_port));
  if (local_port != nullptr) *local_port = LocalPort(fd);
  const std::string req = HttpRequestText(host_port, method, path, body);
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return Unavailable("write");
  }
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t head_end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos)
    return DataLoss("not HTTP: " + resp.substr(0, 80));
  if (resp.find(" 200 ") == std::string::npos) return Unavailable("HTTP status: " + resp.substr(0, resp.find('\r')));
  return resp.substr(head_end + 4);
}

inline StatusOr<std::string> HttpGet(const std::string& host_port, const std::string& path) {
  return HttpRequest(host_port, "GET", path);
}

// Prometheus text format: "name{labels} value" lines, keyed by everything
// before the value (e.g. `seer_prefill_requests_total{code="OK"}`).
inline std::map<std::string, double> ParseMetrics(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return out;
}

inline double Metric(const std::map<std::string, double>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? -1.0 : it->second;
}

inline StatusOr<std::map<std::string, double>> Scrape(const std::string& metrics_address) {
  SEER_ASSIGN_OR_RETURN(std::string body, HttpGet(metrics_address, "/metrics"));
  return ParseMetrics(body);
}

inline grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& address,
                                                                   const std::string& service = "") {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  if (!s.ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return resp.status();
}

// Resident memory of a process, bytes.
// The process's thread count (/proc), or -1.
inline int ThreadCount(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "Threads:") {
      int n = -1;
      in >> n;
      return n;
    }
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

inline int64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

// Whether a process has libcublasLt mapped (the CUDA build links it).
inline bool MapsCublasLt(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(in, line))
    if (line.find("libcublasLt") != std::string::npos) return true;
  return false;
}

// A random Llama checkpoint in float32, written with SafetensorsWriter, sized
// so that a CPU prefill of a couple of thousand tokens takes a noticeable
// time and its KV cache is tens of MB.
struct RandomLlamaSpec {
  int vocab = 512, hidden = 256, inter = 512, layers = 8, heads = 4, kv_heads = 4, head_dim = 64;
  int max_pos = 8192;
  uint32_t seed = 7;
};

inline std::string WriteRandomLlama(const std::string& dir, const RandomLlamaSpec& s) {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(s.seed);
  SafetensorsWriter w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    w.AddF32(name, shape, v);
  };
  const int H = s.hidden, qd = s.heads * s.head_dim, kvd = s.kv_heads * s.head_dim, I = s.inter;
  const float a = 1.5f / std::sqrt(float(H));
  add("model.embed_tokens.weight", {s.vocab, H}, -1.0f, 1.0f);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, 0.8f, 1.2f);
    add(p + "post_attention_layernorm.weight", {H}, 0.8f, 1.2f);
    add(p + "self_attn.q_proj.weight", {qd, H}, -a, a);
    add(p + "self_attn.k_proj.weight", {kvd, H}, -a, a);
    add(p + "self_attn.v_proj.weight", {kvd, H}, -a, a);
    add(p + "self_attn.o_proj.weight", {H, qd}, -a, a);
    add(p + "mlp.gate_proj.weight", {I, H}, -a, a);
    add(p + "mlp.up_proj.weight", {I, H}, -a, a);
    add(p + "mlp.down_proj.weight", {H, I}, -a, a);
  }
  add("model.norm.weight", {H}, 0.8f, 1.2f);
  add("lm_head.weight", {s.vocab, H}, -a, a);
  if (!w.WriteFile(dir + "/model.safetensors").ok()) return "";
  std::ofstream(dir + "/config.json")
      << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": " << s.vocab
      << ", \"hidden_size\": " << H << ", \"intermediate_size\": " << I << ", \"num_hidden_layers\": " << s.layers
      << ", \"num_attention_heads\": " << s.heads << ", \"num_key_value_heads\": " << s.kv_heads
      << ", \"head_dim\": " << s.head_dim << ", \"max_position_embeddings\": " << s.max_pos
      << ", \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", \"attention_bias\": false,"
      << " \"tie_word_embeddings\": false, \"torch_dtype\": \"float32\"}\n";
  return dir;
}

// The monolithic engine's reply to `ids`: a prefill (dense), then n times
// `pick` on the last logits and, but for the last, a decode step of what it
// picked. The reference the services' replies are compared with.
inline std::vector<int32_t> MonolithicTokens(Engine& engine, const std::vector<int32_t>& ids, int n,
                                             const std::function<int32_t(const std::vector<float>&)>& pick) {
  std::vector<int32_t> out;
  std::unique_ptr<KvCache> cache = engine.NewCache(static_cast<int>(ids.size()) + n).value();
  StatusOr<PrefillResult> r = engine.Prefill(ids, PrefillOptions{}, cache.get(), nullptr);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return out;
  const int vocab = engine.config().vocab_size;
  std::vector<float> logits(r->logits.end() - vocab, r->logits.end());
  for (int i = 0; i < n; ++i) {
    out.push_back(pick(logits));
    if (i + 1 < n) {
      const Status s = engine.DecodeStep(out.back(), cache.get(), &logits);
      EXPECT_TRUE(s.ok()) << s.ToString();
      if (!s.ok()) break;
    }
  }
  return out;
}

inline std::vector<int32_t> RandomIds(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (auto& x : ids) x = d(rng);
  return ids;
}

inline std::string JoinIds(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

}  // namespace seer::testing
