// `seer run`: offline prefill and greedy generation on this machine, with no
// server. Loads a Hugging Face checkpoint (and optionally SeerAttention
// gates), prefills a prompt, prints the prediction and can dump the logits,
// the KV cache and the gate masks to a safetensors file.
#pragma once

namespace seer {

// argv[0] is "run"; flags start at argv[1]. Returns the exit code: 0 on
// success, 2 for usage errors (bad or missing flags), 1 for runtime errors.
int RunOfflineCommand(int argc, char** argv);

}  // namespace seer
