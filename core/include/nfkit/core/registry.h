#pragma once
// A thread-safe name -> factory table: the open registries of transforms (flows/builder.h) and
// of Boltzmann-generator coordinate maps (boltzmann/generator.h). Built-in entries come with
// the constructor; add() registers more (or replaces one).
//
//   static nfkit::Registry<Factory> r({{"internal", make_internal}});
//   r.add("register_mine", "mine", make_mine);   // who registers: for the error message
//   if (auto f = r.find(name)) return f(args);
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "nfkit/core/error.h"

namespace nfkit {

template <class Factory>
class Registry {
 public:
  explicit Registry(std::map<std::string, Factory> builtins = {}) : table_(std::move(builtins)) {}
  /// Registers f under name; `who` names the caller in the error for an empty name or factory.
  void add(const char* who, const std::string& name, Factory f) {
    if (name.empty() || !f) usage_error(who, "needs a name and a factory");
    std::lock_guard<std::mutex> lock(mutex_);
    table_[name] = std::move(f);
  }
  /// The factory registered under name, or an empty one.
  Factory find(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = table_.find(name);
    return it == table_.end() ? Factory() : it->second;
  }
  /// The registered names, sorted.
  std::vector<std::string> names() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> out;
    for (const auto& kv : table_) out.push_back(kv.first);
    return out;
  }
  /// "a, b, c" for error messages.
  std::string joined_names() const {
    std::string s;
    for (const auto& n : names()) s += (s.empty() ? "" : ", ") + n;
    return s;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, Factory> table_;
};

}  // namespace nfkit
