#include "nfkit/core/files.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "nfkit/core/error.h"

namespace nfkit {

void check_writable(const std::string& path) {
  const std::string probe = path + ".probe-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(probe.c_str(), "wb");
  if (!f) runtime_error(path, "cannot be written (directory missing or not writable?)");
  std::fclose(f);
  std::remove(probe.c_str());
}

void remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string prefix = p.filename().string() + ".tmp-";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(digits));
    if (pid == ::getpid() || pid <= 0) continue;
    if (::kill(pid, 0) == -1 && errno == ESRCH) {
      std::error_code rm;
      fs::remove(it->path(), rm);  // best effort: another writer may have removed it first
    }
  }
}

void sync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) runtime_error(path, "cannot be opened to flush it to disk");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) runtime_error(path, "cannot be flushed to disk (disk full?)");
}

void write_file_atomic(const std::string& path, const std::string& content) {
  remove_stale_temporaries(path);
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) runtime_error(path, "cannot be written (directory missing or not writable?)");
    out << content;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      runtime_error(path, "write failed (disk full?)");
    }
  }
  try {
    sync_file(tmp);
  } catch (const Error&) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    runtime_error(path, "cannot be renamed into place");
  }
}

std::string file_extension(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string ext = path.substr(dot + 1);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string find_data_file(const std::string& path) {
  if (file_exists(path)) return path;
  const std::string prefix = "data/";
  if (path.compare(0, prefix.size(), prefix) != 0) return path;
  const std::string rel = path.substr(prefix.size());
  if (const char* env = std::getenv("NFKIT_DATA"); env && *env) {
    const std::string p = std::string(env) + "/" + rel;
    if (file_exists(p)) return p;
  }
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<size_t>(n));
    dir = dir.substr(0, dir.find_last_of('/'));         // <prefix>/bin
    dir = dir.substr(0, dir.find_last_of('/'));         // <prefix>
    const std::string p = dir + "/share/nfkit/data/" + rel;
    if (file_exists(p)) return p;
  }
  return path;
}

void make_directories(const std::string& path, const std::string& what) {
  if (path.empty()) return;
  for (size_t pos = path.find('/', 1);; pos = path.find('/', pos + 1)) {
    const std::string part = pos == std::string::npos ? path : path.substr(0, pos);
    if (!part.empty() && ::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
      runtime_error(what, part + ": cannot create the directory (" + std::strerror(errno) + ")");
    if (pos == std::string::npos) break;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    runtime_error(what, path + " exists but is not a directory");
}

}  // namespace nfkit
