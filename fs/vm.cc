#include "fs/vm.h"

#include <algorithm>

#include "common/log.h"
#include "common/stats.h"

namespace cloudvmi::fs {

namespace {
constexpr size_t kLatencyWindow = 4096;

SessionOptions options_for(const VmConfig& c, const SessionOptions& base) {
    SessionOptions o = base;
    o.gdb_endpoint = c.gdb;
    o.qmp = c.qmp;
    return o;
}
}  // namespace

Error vm_error(const Error& e) {
    // The guest's errno, our deliberate refusals and "not now" answers are the caller's
    // answer; every other failure of ours is masked, by its kind, not its errno.
    if (e.from_guest() || e.refused() || e.unavailable()) return e;
    switch (e.code()) {
        case ENOENT:  // no gdbstub socket: the VM is not running
        case ECONNREFUSED:
        case ECONNRESET:
        case ENOTCONN:
        case EPIPE:
        case EPROTO:
        case EHOSTUNREACH:
        case ENETUNREACH:
        case ECONNABORTED:
            return Error(ENOTCONN, e.message());
        default:
            return Error(EIO, e.message());
    }
}

Vm::Vm(std::string node, const VmConfig& config, const SessionOptions& base)
    : node_(std::move(node)),
      config_(config),
      session_(std::make_unique<GuestSession>(options_for(config, base))),
      files_(*session_),
      changes_(*session_),
      executor_("vm " + config.name) {}

ChangeGate& Vm::gate() const {
    if (gate_) return *gate_;
    static PolicyStore builtin("");
    static ChangeGate fallback(builtin, nullptr);
    return fallback;
}

Vm::~Vm() {
    shutdown();
}

void Vm::record(double ms, const Error* error) {
    std::lock_guard lock(stats_mutex_);
    ++requests_;
    if (error != nullptr) {
        if (error->from_guest()) {
            ++guest_errors_;
        } else {
            ++errors_;
        }
    }
    if (recent_ms_.size() < kLatencyWindow) {
        recent_ms_.push_back(ms);
    } else {
        recent_ms_[recent_next_] = ms;
        recent_next_ = (recent_next_ + 1) % kLatencyWindow;
    }
    max_ms_ = std::max(max_ms_, ms);
}

VmStats Vm::stats() const {
    VmStats s;
    std::vector<double> sorted;
    {
        std::lock_guard lock(stats_mutex_);
        s.requests = requests_;
        s.errors = errors_;
        s.guest_errors = guest_errors_;
        s.max_ms = max_ms_;
        sorted = recent_ms_;
    }
    s.queued = executor_.queued();
    if (!sorted.empty()) {
        std::sort(sorted.begin(), sorted.end());
        s.p50_ms = nearest_rank(sorted, 0.50);
        s.p90_ms = nearest_rank(sorted, 0.90);
        s.p99_ms = nearest_rank(sorted, 0.99);
    }
    return s;
}

void Vm::shutdown() {
    executor_.stop(ESHUTDOWN);
    if (session_) {
        if (auto r = session_->detach(); !r) {
            LOG_WARN("vm %s: detach: %s", config_.name.c_str(), r.error().describe().c_str());
        }
    }
}

}  // namespace cloudvmi::fs
