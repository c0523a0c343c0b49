#include "base/flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>

namespace seer {

FlagSet::FlagSet(std::string usage, std::string description)
    : usage_(std::move(usage)), description_(std::move(description)) {}

void FlagSet::Strings(const std::string& name, std::vector<std::string>* target, const std::string& help) {
  flags_.push_back({name, Kind::kStrings, target, help, ""});
}

void FlagSet::String(const std::string& name, std::string* target, const std::string& help) {
  flags_.push_back({name, Kind::kString, target, help, target->empty() ? "" : *target});
}
void FlagSet::Int(const std::string& name, int64_t* target, const std::string& help) {
  flags_.push_back({name, Kind::kInt, target, help, std::to_string(*target)});
}
void FlagSet::Int(const std::string& name, int64_t* target, const std::string& help, int64_t min, int64_t max) {
  Int(name, target, help);
  flags_.back().min = min;
  flags_.back().max = max;
}
void FlagSet::Double(const std::string& name, double* target, const std::string& help) {
  std::ostringstream os;
  os << *target;
  flags_.push_back({name, Kind::kDouble, target, help, os.str()});
}
void FlagSet::Seconds(const std::string& name, double* target, const std::string& help) {
  Double(name, target, help);
  flags_.back().kind = Kind::kSeconds;
}
void FlagSet::SetDefaultText(const std::string& name, std::string text) {
  if (Flag* f = Find(name)) f->default_text = std::move(text);
}
Status FlagSet::RefusePositional() const {
  if (positional_.empty()) return OkStatus();
  return InvalidArgument("unexpected argument '" + positional_.front() + "' (flags are --name VALUE)");
}
void FlagSet::Bool(const std::string& name, bool* target, const std::string& help) {
  flags_.push_back({name, Kind::kBool, target, help, *target ? "true" : "false"});
}

FlagSet::Flag* FlagSet::Find(const std::string& name) {
  for (auto& f : flags_)
    if (f.name == name) return &f;
  return nullptr;
}

bool FlagSet::WasSet(const std::string& name) const {
  for (const auto& f : flags_)
    if (f.name == name) return f.set;
  return false;
}

Status FlagSet::Assign(Flag& f, const std::string& value) {
  const bool first = !f.set;
  f.set = true;
  switch (f.kind) {
    case Kind::kString: *static_cast<std::string*>(f.target) = value; return OkStatus();
    case Kind::kStrings: {
      auto* list = static_cast<std::vector<std::string>*>(f.target);
      if (first) list->clear();
      list->push_back(value);
      return OkStatus();
    }
    case Kind::kInt: {
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || errno == ERANGE)
        return InvalidArgument("--" + f.name + ": expected an integer, got '" + value + "'");
      if (v < f.min || v > f.max) {
        return InvalidArgument("--" + f.name + ": " + value + " is out of range [" + std::to_string(f.min) + ", " +
                               std::to_string(f.max) + "]");
      }
      *static_cast<int64_t*>(f.target) = v;
      return OkStatus();
    }
    case Kind::kDouble:
    case Kind::kSeconds: {
      errno = 0;
      char* end = nullptr;
      double v = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
        return InvalidArgument("--" + f.name + ": expected a finite number, got '" + value + "'");
      if (f.kind == Kind::kSeconds && !(v >= 0.0 && v <= kMaxFlagSeconds)) {
        return InvalidArgument("--" + f.name + ": " + value + " seconds is out of range [0, " +
                               std::to_string(static_cast<int64_t>(kMaxFlagSeconds)) + "]");
      }
      *static_cast<double*>(f.target) = v;
      return OkStatus();
    }
    case Kind::kBool:
      if (value == "true" || value == "1" || value == "yes") {
        *static_cast<bool*>(f.target) = true;
      } else if (value == "false" || value == "0" || value == "no") {
        *static_cast<bool*>(f.target) = false;
      } else {
        return InvalidArgument("--" + f.name + ": expected true or false, got '" + value + "'");
      }
      return OkStatus();
  }
  return Internal("unreachable");
}

Status FlagSet::Parse(int argc, char** argv, int begin) {
  for (int i = begin; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help_requested_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    Flag* f = Find(name);
    if (f == nullptr) return InvalidArgument("unknown flag --" + name + " (see --help)");
    if (!has_value) {
      // A bare boolean means true; a word after it is its value (no command
      // takes positional arguments, so "--flag maybe" is a bad value, not a
      // stray argument).
      if (f->kind == Kind::kBool && (i + 1 >= argc || argv[i + 1][0] == '-')) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return InvalidArgument("--" + name + ": missing value");
      }
    }
    SEER_RETURN_IF_ERROR(Assign(*f, value));
  }
  return OkStatus();
}

std::string FlagSet::Help() const {
  std::ostringstream os;
  os << "Usage: " << usage_ << "\n\n" << description_ << "\n\nFlags:\n";
  for (const auto& f : flags_) {
    os << "  --" << f.name;
    switch (f.kind) {
      case Kind::kString: os << " STRING"; break;
      case Kind::kStrings: os << " STRING (repeatable)"; break;
      case Kind::kInt: os << " INT"; break;
      case Kind::kDouble: os << " NUMBER"; break;
      case Kind::kSeconds: os << " SECONDS"; break;
      case Kind::kBool: os << " [true|false]"; break;
    }
    os << "\n      " << f.help;
    if (!f.default_text.empty()) os << " (default: " << f.default_text << ")";
    os << "\n";
  }
  os << "  -h, --help\n      Show this help.\n";
  return os.str();
}

}  // namespace seer
