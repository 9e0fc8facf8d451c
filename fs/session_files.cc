// /vmi/<node>/<vm>/.cloudvmi/: files about the session itself, in "key: value" lines
// (stats.json for programs). status and stats never touch the guest, so they answer even
// when the VM is down or busy; kernel asks the guest (uname) through the VM's queue.
#include <fcntl.h>

#include <cmath>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/strings.h"
#include "fs/filesystem.h"

namespace cloudvmi::fs {

namespace {

// Content generated when the file is opened; reads are served from it.
class BufferHandle final : public FileHandle {
  public:
    explicit BufferHandle(std::string content) : content_(std::move(content)) {}
    ErrorOr<std::vector<uint8_t>> read(size_t size, off_t offset) override {
        if (offset < 0) return make_error(EINVAL, "negative offset");
        size_t off = static_cast<size_t>(offset);
        if (off >= content_.size()) return std::vector<uint8_t>{};
        size_t n = std::min(size, content_.size() - off);
        return std::vector<uint8_t>(content_.begin() + static_cast<ptrdiff_t>(off),
                                    content_.begin() + static_cast<ptrdiff_t>(off + n));
    }

  private:
    std::string content_;
};

// Latencies are kept to the precision they are measured at (microseconds).
double rounded(double v, double unit) {
    return std::round(v / unit) * unit;
}

std::string status_text(Vm& vm) {
    auto st = vm.session().status();
    std::string out = strformat("state: %s\n", to_string(st.state));
    if (st.state == SessionState::kError && !st.error.empty()) {
        out += "error: " + st.error + "\n";
    }
    out += "gdb: " + vm.config().gdb + "\n";
    if (st.shadow_pid > 0)
        out += strformat("shadow_pid: %lld\n", static_cast<long long>(st.shadow_pid));
    if (st.guardian_pid > 0)
        out += strformat("guardian_pid: %d\n", static_cast<int>(st.guardian_pid));
    if (st.kernel.syscall_entry != 0) out += strformat("pti: %s\n", st.kernel.pti ? "on" : "off");
    if (st.state == SessionState::kAttaching && !st.progress.empty()) {
        out += "progress: " + st.progress + "\n";
    }
    if (!st.bootstrap.borrowed.empty()) out += "borrowed: " + st.bootstrap.borrowed + "\n";
    if (!st.engine.empty()) out += "engine: " + st.engine + "\n";
    if (st.paused_by_others) {
        out += "vm: stopped by someone else (" + (st.vm_status.empty() ? "paused" : st.vm_status) +
               "); left so, requests fail with EAGAIN\n";
    } else if (!st.vm_status.empty()) {
        out += "vm: " + st.vm_status + "\n";
    }
    if (!st.recovered.empty()) out += "recovered: " + st.recovered + "\n";
    return out;
}

// One set of fields for stats (key: value lines) and stats.json (one JSON object).
nlohmann::ordered_json stats_fields(Vm& vm) {
    auto s = vm.stats();
    auto st = vm.session().status();
    return {
        {"requests", s.requests},
        {"errors", s.errors},
        {"guest_errors", s.guest_errors},
        {"queued", s.queued},
        {"latency_p50_ms", rounded(s.p50_ms, 0.001)},
        {"latency_p90_ms", rounded(s.p90_ms, 0.001)},
        {"latency_p99_ms", rounded(s.p99_ms, 0.001)},
        {"latency_max_ms", rounded(s.max_ms, 0.001)},
        {"batches", st.batches},
        {"batch_failures", st.failures},
        {"shadows_created", st.shadows_created},
        {"bootstrap_ms", rounded(st.bootstrap.total_ms, 0.1)},
        {"bootstrap_vm_stops", st.bootstrap_cost.stops},
        {"bootstrap_vm_stopped_ms", rounded(st.bootstrap_cost.stopped_ms, 0.1)},
        {"bootstrap_kernel_trap_stops", st.bootstrap.injector.kernel_trap_stops},
        {"bootstrap_kernel_trap_rests", st.bootstrap.injector.kernel_trap_rests},
        {"vm_stops", st.vm_cost.stops},
        {"vm_stopped_ms", rounded(st.vm_cost.stopped_ms, 0.1)},
        {"breakpoint_changes", st.vm_cost.breakpoint_changes},
        {"mailbox_batches", st.mailbox.batches},
        {"mailbox_round_trip_p50_us", rounded(st.mailbox.p50_us, 0.1)},
        {"mailbox_round_trip_p90_us", rounded(st.mailbox.p90_us, 0.1)},
        {"mailbox_round_trip_p99_us", rounded(st.mailbox.p99_us, 0.1)},
        {"mailbox_round_trip_max_us", rounded(st.mailbox.max_us, 0.1)},
        {"mailbox_remaps", st.mailbox.remaps},
        {"mailbox_withdrawn", st.mailbox.withdrawn},
        {"shadows_distrusted", st.distrusted},
        {"stuck_shadows_ended", st.stuck_shadows_ended},
        {"paused_by_others", st.paused_by_others ? 1 : 0},
        {"vm_status", st.vm_status.empty() ? "unknown" : st.vm_status},
        {"engine", st.engine.empty() ? "none" : st.engine},
        {"state", to_string(st.state)},
    };
}

std::string stats_text(Vm& vm, bool json) {
    auto fields = stats_fields(vm);
    // Guest-influenced strings (vm_status) are escaped by nlohmann, never by hand.
    if (json) return fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::string out;
    for (const auto& [key, value] : fields.items()) {
        out += key + ": " + (value.is_string() ? value.get<std::string>() : value.dump()) + "\n";
    }
    return out;
}

ErrorOr<std::string> kernel_text(Vm& vm) {
    auto u = vm.files().uname();
    if (!u) {
        Error e = u.error();
        return std::unexpected(e.from_guest() ? e : Error(ENOTCONN, e.message()));
    }
    return strformat("sysname: %s\nnodename: %s\nrelease: %s\nversion: %s\nmachine: %s\n",
                     u->sysname.c_str(), u->nodename.c_str(), u->release.c_str(),
                     u->version.c_str(), u->machine.c_str());
}

// The guest kernel's entry points: they reveal its KASLR base, so only host root reads them.
std::string kernel_entry_text(Vm& vm) {
    auto st = vm.session().status();
    if (st.kernel.syscall_entry == 0) return "";
    return "syscall_entry: " + hex_u64(st.kernel.syscall_entry) + "\n" +
           "sysret: " + hex_u64(st.kernel.sysret) + "\n" +
           strformat("pti: %s\n", st.kernel.pti ? "on" : "off");
}

enum class Kind { kStatus, kKernel, kKernelEntry, kStats, kStatsJson };

struct FileSpec {
    const char* name;
    Kind kind;
};
const FileSpec kFiles[] = {
    {"status", Kind::kStatus},
    {"kernel", Kind::kKernel},
    {"kernel-entry", Kind::kKernelEntry},
    {"stats", Kind::kStats},
    {"stats.json", Kind::kStatsJson},
};

class SessionFile final : public Node {
  public:
    SessionFile(Vm& vm, const FileSpec& spec) : vm_(vm), spec_(spec) {}
    // Only the kernel file needs the guest.
    Vm* vm() const override { return spec_.kind == Kind::kKernel ? &vm_ : nullptr; }
    bool local_getattr() const override { return true; }
    Exposure exposure() const override {
        return spec_.kind == Kind::kKernelEntry ? Exposure::kKernelAddresses : Exposure::kGuestData;
    }
    std::string key() const override { return "s:" + vm_.key() + ":" + spec_.name; }
    ErrorOr<NodeAttr> getattr() override {
        mode_t mode = exposure() == Exposure::kKernelAddresses ? 0400 : 0444;
        return NodeAttr{synthetic_stat(S_IFREG | mode), 0};
    }
    ErrorOr<std::unique_ptr<FileHandle>> open(int flags, const Caller&) override {
        if ((flags & O_ACCMODE) != O_RDONLY) return make_error(EACCES, "read-only file");
        std::string content;
        switch (spec_.kind) {
            case Kind::kStatus:
                content = status_text(vm_);
                break;
            case Kind::kKernel:
                content = TRY(kernel_text(vm_));
                break;
            case Kind::kKernelEntry:
                content = kernel_entry_text(vm_);
                break;
            case Kind::kStats:
                content = stats_text(vm_, false);
                break;
            case Kind::kStatsJson:
                content = stats_text(vm_, true);
                break;
        }
        return std::unique_ptr<FileHandle>(std::make_unique<BufferHandle>(std::move(content)));
    }

  private:
    Vm& vm_;
    const FileSpec& spec_;
};

class SessionDir final : public Node {
  public:
    explicit SessionDir(Vm& vm) : vm_(vm) {}
    std::string key() const override { return "s:" + vm_.key(); }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        for (const auto& f : kFiles) {
            if (name == f.name) return std::shared_ptr<Node>(std::make_shared<SessionFile>(vm_, f));
        }
        return make_error(ENOENT, name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        std::vector<DirEntry> out;
        for (const auto& f : kFiles) {
            out.push_back(
                DirEntry{f.name, S_IFREG, plus ? std::make_shared<SessionFile>(vm_, f) : nullptr});
        }
        return out;
    }

  private:
    Vm& vm_;
};

}  // namespace

std::shared_ptr<Node> make_session_dir(Vm& vm) {
    return std::make_shared<SessionDir>(vm);
}

}  // namespace cloudvmi::fs
