// Runs one of this build's programs (SEER_BIN_DIR/<name>) the way a user's
// shell would, for the CLI tests: exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace seer::testing {

struct RunOutput {
  int exit_code = -1;
  std::string out, err;
};

// A file's whole contents ("" when it cannot be read).
inline std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A path in the temp directory, private to this process.
inline std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("seer_cli_" + std::to_string(getpid()) + "_" + name)).string();
}

inline std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline RunOutput RunBinary(const std::string& binary, const std::vector<std::string>& args) {
  const std::string out_path = TempPath("stdout"), err_path = TempPath("stderr");
  std::string cmd = ShellQuote(std::string(SEER_BIN_DIR) + "/" + binary);
  for (const auto& a : args) cmd += " " + ShellQuote(a);
  cmd += " >" + ShellQuote(out_path) + " 2>" + ShellQuote(err_path);
  const int status = std::system(cmd.c_str());
  RunOutput r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  r.out = Slurp(out_path);
  r.err = Slurp(err_path);
  std::filesystem::remove(out_path);
  std::filesystem::remove(err_path);
  return r;
}

}  // namespace seer::testing
