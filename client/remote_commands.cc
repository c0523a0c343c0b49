#include "client/remote_commands.h"

#include <cstdio>
#include <exception>

#include "rpc/lock_order.h"

namespace seer {

int RunGenerateCommand(int argc, char** argv);  // remote_generate.cc
int RunPrefillCommand(int argc, char** argv);  // remote_prefill.cc

int RunRemoteCommand(const std::string& name, int argc, char** argv) {
  SetLockOrderChecks(false);  // before any gRPC call, as the servers do
  // Nothing below should throw; a surprise from a library becomes a message.
  try {
    if (name == "generate") return RunGenerateCommand(argc, argv);
    if (name == "prefill") return RunPrefillCommand(argc, argv);
    std::fprintf(stderr, "seer: unknown remote command '%s'\n", name.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seer %s: INTERNAL: %s\n", name.c_str(), e.what());
    return 1;
  }
}

}  // namespace seer
