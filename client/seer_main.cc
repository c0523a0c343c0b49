// The seer CLI: dispatches to its subcommands.
#include <cstdio>
#include <cstring>
#include <string>

#include "base/version.h"
#include "client/run_command.h"
#include "client/tokenize_command.h"
#ifdef SEER_HAVE_SERVER
#include "client/remote_commands.h"
#endif

namespace {

void PrintUsage(std::FILE* to) {
  std::fprintf(to,
               "Usage: seer <command> [flags]\n"
               "\n"
               "Long-context prefill with SeerAttention gated block-sparse attention.\n"
               "\n"
               "Commands:\n"
               "  run       Prefill a prompt on this machine (no server), print the next token,\n"
               "            optionally generate greedily and dump logits, KV cache and gate masks.\n"
               "  tokenize  Encode text, or a chat through the checkpoint's chat template, to token ids\n"
               "            with its Hugging Face tokenizer.\n"
               "  detokenize Decode token ids to text.\n"
#ifdef SEER_HAVE_SERVER
               "  generate  Send a prompt to a seer-decode server and stream the generated tokens.\n"
               "  prefill   Call Prefill on a seer-prefill server and receive the KV cache stream.\n"
#endif
               "\n"
               "Run 'seer <command> --help' for the flags of a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const std::string command = argv[1];
  if (command == "-h" || command == "--help" || command == "help") {
    PrintUsage(stdout);
    return 0;
  }
  if (command == "--version" || command == "version") {
    std::printf("seer %s (commit %s, CUDA %s)\n", seer::kVersion, seer::kBuildCommit, seer::kBuildCuda);
    return 0;
  }
  if (command == "run") return seer::RunOfflineCommand(argc - 1, argv + 1);
  if (command == "tokenize") return seer::RunTokenizeCommand(argc - 1, argv + 1);
  if (command == "detokenize") return seer::RunDetokenizeCommand(argc - 1, argv + 1);
#ifdef SEER_HAVE_SERVER
  if (command == "generate" || command == "prefill") return seer::RunRemoteCommand(command, argc - 1, argv + 1);
#endif
  std::fprintf(stderr, "seer: unknown command '%s'\n\n", command.c_str());
  PrintUsage(stderr);
  return 2;
}
