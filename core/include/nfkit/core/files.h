#pragma once
// Small file helpers that keep the "no partial output" promise.
//
//   nfkit::check_writable("out/model.h5");        // fail before hours of work, not after
//   nfkit::write_file_atomic("x.csv", text);       // temporary name, then rename
#include <string>

namespace nfkit {

/// Throws RuntimeError naming the path if a file cannot be created there (the directory is
/// missing or not writable). Leaves nothing behind.
void check_writable(const std::string& path);

/// Writes content to "<path>.tmp-<pid>", flushes it to disk and renames it onto path.
/// RuntimeError on failure; the temporary file is removed.
void write_file_atomic(const std::string& path, const std::string& content);

/// Removes "<path>.tmp-<pid>" files whose process no longer runs: what an atomic write of path
/// leaves behind when its process is killed (SIGKILL, a crash) between writing and renaming.
/// Writers call it before they start; files of running processes are left alone.
void remove_stale_temporaries(const std::string& path);

/// fsync: the file's data reach the disk, so that renaming it over an older file never leaves
/// an empty or partial file under the final name after a power loss. RuntimeError on failure.
void sync_file(const std::string& path);

/// Lower-case extension without the dot ("h5" for "a/b.h5"), or "".
std::string file_extension(const std::string& path);

/// Whether a file (or directory) exists at path.
bool file_exists(const std::string& path);

/// The bundled data (alanine dipeptide, PTA spectra, grid cases) from any directory: `path`
/// itself when it exists; otherwise, when it starts with "data/", the same file under the
/// directory $NFKIT_DATA names (when set), then under the installed share/nfkit/data beside the
/// running executable (<prefix>/bin/nfkit -> <prefix>/share/nfkit/data); else `path` unchanged,
/// so that the error of whoever opens it names what was asked.
///   find_data_file("data/alanine_dipeptide/ala2.pdb")
std::string find_data_file(const std::string& path);

/// Creates the directory path and its missing parents (mkdir -p); throws RuntimeError naming
/// `what` (an option, say) and the path when one cannot be created.
void make_directories(const std::string& path, const std::string& what);

}  // namespace nfkit
