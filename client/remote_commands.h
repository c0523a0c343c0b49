// The `seer` subcommands that talk to the gRPC services (`generate`,
// `prefill`). Compiled into the CLI only when the gRPC stack is present
// (SEER_HAVE_SERVER); the implementation lives in client/remote_*.cc.
#pragma once

#include <string>

namespace seer {

// Runs subcommand `name` with argv[0] being the subcommand itself, so flags
// start at argv[1]. Returns the process exit code: 0 on success, 2 for usage
// errors, 1 for runtime errors.
int RunRemoteCommand(const std::string& name, int argc, char** argv);

}  // namespace seer
