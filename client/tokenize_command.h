// `seer tokenize` and `seer detokenize`: a checkpoint's Hugging Face
// tokenizer (tokenizer.json + tokenizer_config.json) and chat template on
// the command line, through text/. Exit codes: 0 success, 1 runtime error,
// 2 usage error.
#pragma once

namespace seer {

// argv[0] is "tokenize" / "detokenize".
int RunTokenizeCommand(int argc, char** argv);
int RunDetokenizeCommand(int argc, char** argv);

}  // namespace seer
