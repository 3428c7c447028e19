#include "nfkit/opf/solver_pool.h"

#include <ATen/Parallel.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>

#include "nfkit/core/error.h"

namespace nfkit {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Caches one DcNetwork per outage (the base network under -1).
class Networks {
 public:
  Networks(const PowerCase& pc, DcConvention c) : pc_(pc), conv_(c) {}
  const DcNetwork& get(int outage) {
    auto it = nets_.find(outage);
    if (it == nets_.end())
      it = nets_.emplace(outage, std::make_unique<DcNetwork>(outage < 0 ? pc_ : with_branch_outage(pc_, outage), conv_)).first;
    return *it->second;
  }

 private:
  const PowerCase& pc_;
  DcConvention conv_;
  std::map<int, std::unique_ptr<DcNetwork>> nets_;
};

OpfInstanceResult solve_one(Networks& nets, const DcNetwork& base, const OpfInstance& inst, const DcOpfOptions& o) {
  const DcNetwork& net = nets.get(inst.outage_row);
  const auto sol = solve_dc_opf(net, inst.pd, o);
  OpfInstanceResult r;
  r.status = sol.status;
  r.seconds = sol.seconds;
  r.pg = Eigen::VectorXd::Constant(base.num_generators(), kNaN);
  r.theta = Eigen::VectorXd::Constant(base.num_buses(), kNaN);
  r.lmp = Eigen::VectorXd::Constant(base.num_buses(), kNaN);
  r.flows = Eigen::VectorXd::Constant(base.num_branches(), kNaN);
  if (sol.status != OpfStatus::kOptimal) {
    r.cost = kNaN;
    return r;
  }
  r.cost = sol.cost;
  r.pg = sol.pg;  // outages remove branches only: same generators and buses
  r.theta = sol.theta;
  r.lmp = sol.lmp;
  r.flows.setZero();
  // map the outage network's branches onto the base network's
  for (int64_t k = 0, j = 0; k < base.num_branches() && j < net.num_branches(); ++k)
    if (base.branch_rows()[k] == net.branch_rows()[j]) r.flows[k] = sol.flows[j++];
  return r;
}

// Record: index, status, cost, seconds, pg, theta, lmp, flows (doubles).
size_t record_size(const DcNetwork& b) {
  return static_cast<size_t>(4 + b.num_generators() + 2 * b.num_buses() + b.num_branches());
}

void pack(const OpfInstanceResult& r, int64_t index, std::vector<double>& buf) {
  buf.clear();
  buf.push_back(static_cast<double>(index));
  buf.push_back(static_cast<double>(static_cast<int>(r.status)));
  buf.push_back(r.cost);
  buf.push_back(r.seconds);
  for (const Eigen::VectorXd* v : {&r.pg, &r.theta, &r.lmp, &r.flows}) buf.insert(buf.end(), v->data(), v->data() + v->size());
}

int64_t unpack(const double* d, const DcNetwork& b, OpfInstanceResult& r) {
  const int64_t index = static_cast<int64_t>(d[0]);
  r.status = static_cast<OpfStatus>(static_cast<int>(d[1]));
  r.cost = d[2];
  r.seconds = d[3];
  size_t p = 4;
  auto take = [&](Eigen::VectorXd& v, int64_t n) {
    v = Eigen::Map<const Eigen::VectorXd>(d + p, n);
    p += static_cast<size_t>(n);
  };
  take(r.pg, b.num_generators());
  take(r.theta, b.num_buses());
  take(r.lmp, b.num_buses());
  take(r.flows, b.num_branches());
  return index;
}

bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

std::vector<OpfInstanceResult> solve_instances(const PowerCase& pc, DcConvention convention,
                                               const std::vector<OpfInstance>& instances,
                                               const SolverPoolOptions& opts) {
  const char* fn = "solve_instances";
  if (opts.workers < 1) usage_error(fn, "workers must be >= 1");
  const DcNetwork base(pc, convention);
  for (size_t i = 0; i < instances.size(); ++i) {
    base.check_vector(fn, "instance " + std::to_string(i) + " pd", instances[i].pd, base.num_buses());
    const int o = instances[i].outage_row;
    if (o < -1 || o >= static_cast<int>(pc.branches.size()))
      usage_error(fn, "instance " + std::to_string(i) + ": outage row " + std::to_string(o) + " is not a branch row");
  }
  const int64_t n = static_cast<int64_t>(instances.size());
  std::vector<OpfInstanceResult> out(static_cast<size_t>(n));
  Networks nets(pc, convention);
  // build every outage network here, so a bad outage fails in the parent with its message
  for (const auto& inst : instances) nets.get(inst.outage_row);

  const int workers = static_cast<int>(std::min<int64_t>(opts.workers, std::max<int64_t>(n, 1)));
  if (workers == 1) {
    for (int64_t i = 0; i < n; ++i) {
      out[i] = solve_one(nets, base, instances[i], opts.solver);
      if (opts.on_progress) opts.on_progress(i + 1);
    }
    return out;
  }

  std::vector<pid_t> pids;
  std::vector<int> fds;
  for (int w = 0; w < workers; ++w) {
    int p[2];
    if (::pipe(p) != 0) runtime_error(fn, std::string("pipe: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) runtime_error(fn, std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::close(p[0]);
      for (int fd : fds) ::close(fd);
      at::set_num_threads(1);  // one BLAS / OpenMP thread per worker
      std::vector<double> buf;
      int code = 0;
      try {
        for (int64_t i = w; i < n; i += workers) {
          pack(solve_one(nets, base, instances[i], opts.solver), i, buf);
          if (!write_all(p[1], buf.data(), buf.size() * sizeof(double))) {
            code = 3;
            break;
          }
        }
      } catch (...) {
        code = 4;
      }
      ::close(p[1]);
      ::_exit(code);
    }
    ::close(p[1]);
    pids.push_back(pid);
    fds.push_back(p[0]);
  }

  const size_t rec = record_size(base) * sizeof(double);
  std::vector<std::vector<char>> pending(workers);
  std::vector<char> open(workers, 1);
  int64_t done = 0;
  std::vector<char> chunk(1 << 16);
  int n_open = workers;
  while (n_open > 0) {
    std::vector<pollfd> pf;
    std::vector<int> who;
    for (int w = 0; w < workers; ++w)
      if (open[w]) pf.push_back({fds[w], POLLIN, 0}), who.push_back(w);
    if (::poll(pf.data(), pf.size(), -1) < 0) {
      if (errno == EINTR) continue;
      runtime_error(fn, std::string("poll: ") + std::strerror(errno));
    }
    for (size_t k = 0; k < pf.size(); ++k) {
      if (!(pf[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int w = who[k];
      const ssize_t got = ::read(fds[w], chunk.data(), chunk.size());
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        open[w] = 0;
        --n_open;
        ::close(fds[w]);
        continue;
      }
      auto& buf = pending[w];
      buf.insert(buf.end(), chunk.data(), chunk.data() + got);
      size_t used = 0;
      while (buf.size() - used >= rec) {
        std::vector<double> d(record_size(base));
        std::memcpy(d.data(), buf.data() + used, rec);
        OpfInstanceResult r;
        const int64_t i = unpack(d.data(), base, r);
        out[static_cast<size_t>(i)] = std::move(r);
        used += rec;
        ++done;
        if (opts.on_progress) opts.on_progress(done);
      }
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    }
  }
  std::string failure;
  for (int w = 0; w < workers; ++w) {
    int status = 0;
    while (::waitpid(pids[w], &status, 0) < 0 && errno == EINTR) {
    }
    if (failure.empty() && WIFSIGNALED(status))
      failure = "worker " + std::to_string(w) + " died of signal " + std::to_string(WTERMSIG(status));
    else if (failure.empty() && WIFEXITED(status) && WEXITSTATUS(status) != 0)
      failure = "worker " + std::to_string(w) + " failed (exit code " + std::to_string(WEXITSTATUS(status)) + ")";
  }
  if (!failure.empty()) runtime_error(fn, failure);
  if (done != n) runtime_error(fn, "workers returned " + std::to_string(done) + " of " + std::to_string(n) + " results");
  return out;
}

}  // namespace nfkit
