#pragma once
// Small helpers shared by the benchmark programs (argument lists).
#include <sstream>
#include <string>
#include <vector>

namespace nfkit::bench {

/// "a,b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

/// "1,2,4" -> {1, 2, 4} (std::stoll / std::stod; a bad item throws std::invalid_argument).
inline std::vector<int64_t> int_list(const std::string& s) {
  std::vector<int64_t> out;
  for (const auto& t : split(s)) out.push_back(std::stoll(t));
  return out;
}
inline std::vector<double> double_list(const std::string& s) {
  std::vector<double> out;
  for (const auto& t : split(s)) out.push_back(std::stod(t));
  return out;
}

}  // namespace nfkit::bench
