// A small command-line flag parser shared by the seer CLI and the servers.
// Flags are --name VALUE or --name=VALUE; booleans also accept a bare --name
// (true/false, 1/0, yes/no).
// Unknown flags and bad values are errors that name the flag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace seer {

class FlagSet {
 public:
  // `usage` is the first line of --help, e.g. "seer run --model DIR --ids IDS [flags]".
  FlagSet(std::string usage, std::string description);

  void String(const std::string& name, std::string* target, const std::string& help);
  // A flag that may be given more than once; each occurrence appends its
  // value (the target's initial contents are dropped at the first).
  void Strings(const std::string& name, std::vector<std::string>* target, const std::string& help);
  void Int(const std::string& name, int64_t* target, const std::string& help);
  // An integer that must lie in [min, max]; a value outside is an error
  // naming the flag and the range (so that it is never narrowed silently).
  void Int(const std::string& name, int64_t* target, const std::string& help, int64_t min, int64_t max);
  // A finite number (inf and nan are refused).
  void Double(const std::string& name, double* target, const std::string& help);
  // A duration: a finite number of seconds in [0, kMaxFlagSeconds], so that
  // it converts to milliseconds or microseconds without overflow.
  void Seconds(const std::string& name, double* target, const std::string& help);
  static constexpr double kMaxFlagSeconds = 30.0 * 24 * 3600;
  void Bool(const std::string& name, bool* target, const std::string& help);

  // Parses argv[begin..argc). Returns INVALID_ARGUMENT naming the flag on a
  // bad flag. Sets help_requested() for -h / --help (and returns OK).
  Status Parse(int argc, char** argv, int begin = 1);
  bool help_requested() const { return help_requested_; }
  // Arguments that are not flags, in order. Programs that take none refuse
  // them with RefusePositional.
  const std::vector<std::string>& positional() const { return positional_; }
  // Whether --name appeared on the command line.
  bool WasSet(const std::string& name) const;
  // Replaces what --help prints as a flag's default ("" prints none), for a
  // default that is not the target's initial value (the server's, a file's).
  void SetDefaultText(const std::string& name, std::string text);
  // INVALID_ARGUMENT naming the first argument that is not a flag, if any.
  Status RefusePositional() const;

  std::string Help() const;

 private:
  enum class Kind { kString, kStrings, kInt, kDouble, kSeconds, kBool };
  struct Flag {
    std::string name;
    Kind kind;
    void* target;
    std::string help;
    std::string default_text;
    bool set = false;
    int64_t min = INT64_MIN, max = INT64_MAX;  // kInt
  };
  Flag* Find(const std::string& name);
  Status Assign(Flag& f, const std::string& value);

  std::string usage_;
  std::string description_;
  std::vector<Flag> flags_;
  std::vector<std::string> positional_;
  bool help_requested_ = false;
};

}  // namespace seer
