#include "rpc/nccl/nccl_test_peer.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "rpc/nccl/kv_test_pattern.h"

extern char** environ;

namespace seer::nccl_test {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<int> ParseInts(const std::string& s) {
  std::vector<int> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::atoi(item.c_str()));
  return out;
}

void Say(const std::string& line) {
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

}  // namespace

std::string Hex(const std::string& bytes) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

std::string Unhex(const std::string& hex) {
  std::string out;
  auto v = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(v(hex[i]) * 16 + v(hex[i + 1]));
  return out;
}

std::vector<std::string> PeerArgv(const PeerConfig& c) {
  std::string lens;
  for (int l : c.seq_lens) lens += (lens.empty() ? "" : ",") + std::to_string(l);
  return {"--nccl-peer",
          c.role,
          std::to_string(c.device),
          c.unique_id_hex,
          std::to_string(c.layers),
          std::to_string(c.heads),
          std::to_string(c.head_dim),
          lens,
          std::to_string(c.extra_capacity),
          c.whole ? "1" : "0",
          c.step ? "1" : "0",
          std::to_string(c.stall_seconds),
          std::to_string(c.setup_seconds),
          std::to_string(c.salt),
          std::to_string(c.first_token)};
}

int RunPeer(int argc, char** argv) {
  if (argc != 16) {
    Say("error -1 bad peer arguments");
    return 2;
  }
  PeerConfig c;
  c.role = argv[2];
  c.device = std::atoi(argv[3]);
  c.unique_id_hex = argv[4];
  c.layers = std::atoi(argv[5]);
  c.heads = std::atoi(argv[6]);
  c.head_dim = std::atoi(argv[7]);
  c.seq_lens = ParseInts(argv[8]);
  c.extra_capacity = std::atoi(argv[9]);
  c.whole = std::string(argv[10]) == "1";
  c.step = std::string(argv[11]) == "1";
  c.stall_seconds = std::atof(argv[12]);
  c.setup_seconds = std::atof(argv[13]);
  c.salt = static_cast<uint32_t>(std::atoi(argv[14]));
  c.first_token = std::atoi(argv[15]);
  const bool sender = c.role == "send";
  if (cudaSetDevice(c.device) != cudaSuccess) {
    Say("error -1 cudaSetDevice failed");
    return 1;
  }
  NcclLinkOptions o;
  o.device = c.device;
  o.peer = sender ? "the test's decode side" : "the test's prefill side";
  o.stall_timeout_seconds = c.stall_seconds;
  o.setup_timeout_seconds = c.setup_seconds;
  auto link = NcclKvLink::Open(sender ? NcclRole::kSender : NcclRole::kReceiver, Unhex(c.unique_id_hex), o);
  if (!link.ok()) {
    Say("error -1 " + link.status().ToString());
    return 1;
  }
  if (Status s = (*link)->WaitReady(c.setup_seconds + 5); !s.ok()) {
    Say("error -1 " + s.ToString());
    return 1;
  }
  Say("ready");

  // Lines from the parent: "sent T L" for a receiver, "go" for a sender in
  // step mode. EOF (the parent died) ends the process.
  std::mutex mu;
  std::vector<std::pair<int, int>> notes;
  int gos = 0;
  std::condition_variable cv;
  NcclKvLink::Transfer* current = nullptr;
  int current_t = -1;
  std::thread reader([&] {
    std::string line;
    while (std::getline(std::cin, line)) {
      std::lock_guard<std::mutex> lock(mu);
      int t = 0, l = 0;
      if (std::sscanf(line.c_str(), "sent %d %d", &t, &l) == 2) {
        if (current != nullptr && t == current_t)
          current->NoteLayerSent(l);
        else
          notes.emplace_back(t, l);
      } else if (line == "go") {
        ++gos;
      }
      cv.notify_all();
    }
    std::_Exit(3);  // the parent is gone
  });
  reader.detach();

  int rc = 0;
  for (size_t t = 0; t < c.seq_lens.size(); ++t) {
    const int L = c.seq_lens[t];
    const int capacity = sender ? L : L + c.extra_capacity;
    auto cache = DeviceKvCache::Create(c.layers, c.heads, c.head_dim, capacity);
    if (!cache.ok()) {
      Say("error " + std::to_string(t) + " " + cache.status().ToString());
      return 1;
    }
    const uint32_t salt = c.salt + static_cast<uint32_t>(t);
    if (cudaError_t e = sender ? FillPattern(cache->get(), L, salt) : Poison(cache->get()); e != cudaSuccess) {
      Say("error " + std::to_string(t) + " " + cudaGetErrorString(e));
      return 1;
    }
    const NcclKvSplit split = c.whole ? NcclKvSplit::kWhole : NcclKvSplit::kPerHead;
    auto xfer = sender ? (*link)->StartSend(cache->get(), L, split, c.first_token)
                       : (*link)->StartRecv(cache->get(), L, t, split, c.first_token);
    if (!xfer.ok()) {
      Say("error " + std::to_string(t) + " " + xfer.status().ToString());
      rc = 1;
      break;
    }
    if (sender) {
      for (int layer = 0; layer < c.layers; ++layer) {
        if (c.step) {
          // Waits for "go", unless the link fails first (then Finish reports it).
          std::unique_lock<std::mutex> lock(mu);
          while (gos == 0 && (*link)->health().ok()) cv.wait_for(lock, std::chrono::milliseconds(50));
          if (gos == 0) break;
          --gos;
        }
        if (Status s = (*xfer)->SendLayer(layer); !s.ok()) break;
        Say("sent " + std::to_string(t) + " " + std::to_string(layer));
      }
    } else {
      std::lock_guard<std::mutex> lock(mu);
      current = xfer->get();
      current_t = static_cast<int>(t);
      for (auto [nt, nl] : notes)
        if (nt == current_t) current->NoteLayerSent(nl);
    }
    auto stats = (*xfer)->Finish();
    {
      std::lock_guard<std::mutex> lock(mu);
      current = nullptr;
    }
    if (!stats.ok()) {
      Say("error " + std::to_string(t) + " " + stats.status().ToString());
      rc = 1;
      break;
    }
    Say("done " + std::to_string(t) + " " + std::to_string(stats->seconds) + " " + std::to_string(stats->bytes));
    if (!sender) {
      unsigned long long bad = 0;
      cudaError_t e = CountMismatches(cache->get(), L, salt, &bad, c.first_token);
      Say("verified " + std::to_string(t) + " " + (e == cudaSuccess ? std::to_string(bad) : "-1"));
    }
  }
  std::fflush(stdout);
  std::_Exit(rc);  // no static destructors racing the reader thread
}

std::unique_ptr<PeerProcess> PeerProcess::Start(const PeerConfig& c, std::string* error) {
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) {
    *error = std::string("pipe: ") + std::strerror(errno);
    return nullptr;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
  posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
  for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) posix_spawn_file_actions_addclose(&fa, fd);
  std::vector<std::string> args = PeerArgv(c);
  std::vector<char*> argv;
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(to_child[0]);
  close(from_child[1]);
  if (rc != 0) {
    close(to_child[1]);
    close(from_child[0]);
    *error = std::string("posix_spawn: ") + std::strerror(rc);
    return nullptr;
  }
  std::unique_ptr<PeerProcess> p(new PeerProcess());
  p->pid_ = pid;
  p->in_ = to_child[1];
  p->out_ = from_child[0];
  signal(SIGPIPE, SIG_IGN);
  return p;
}

PeerProcess::~PeerProcess() {
  if (!reaped_) {
    Kill();
    Wait(10);
  }
  if (in_ >= 0) close(in_);
  if (out_ >= 0) close(out_);
}

std::optional<std::string> PeerProcess::ReadLine(double timeout_seconds) {
  const Clock::time_point end =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  for (;;) {
    const size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
    if (left <= 0) return std::nullopt;
    pollfd pfd{out_, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left)) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(out_, buf, sizeof(buf));
    if (n <= 0) return std::nullopt;
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

std::optional<std::string> PeerProcess::Expect(const std::string& prefix, double timeout_seconds) {
  const Clock::time_point end =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  for (;;) {
    const double left = std::chrono::duration<double>(end - Clock::now()).count();
    if (left <= 0) return std::nullopt;
    std::optional<std::string> line = ReadLine(left);
    if (!line) return std::nullopt;
    std::fprintf(stderr, "  [peer %d] %s\n", pid_, line->c_str());
    if (line->rfind(prefix, 0) == 0) return line;
    if (line->rfind("error", 0) == 0 && prefix != "error") return line;
  }
}

bool PeerProcess::WriteLine(const std::string& line) {
  const std::string s = line + "\n";
  return write(in_, s.data(), s.size()) == static_cast<ssize_t>(s.size());
}

void PeerProcess::Kill() {
  if (!reaped_ && pid_ > 0) kill(pid_, SIGKILL);
}

std::optional<int> PeerProcess::Wait(double timeout_seconds) {
  if (reaped_) return status_;
  const Clock::time_point end =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  for (;;) {
    int st = 0;
    const pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
      return status_;
    }
    if (Clock::now() > end) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace seer::nccl_test
