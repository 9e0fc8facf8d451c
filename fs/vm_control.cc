// /vmi/<node>/<vm>/ctl/: files whose writes act on the guest rather than on a guest file.
//
//   ctl/kill   "PID [SIGNAL]" sends SIGNAL (a number or a name, TERM by default) to the
//              guest process PID. The policy decides on operation `kill` with the target's
//              path /proc/PID, its name (comm) and real uid, read from the guest first.
#include <fcntl.h>

#include <cctype>
#include <cstdlib>

#include "common/signals.h"
#include "common/strings.h"
#include "fs/filesystem.h"

namespace cloudvmi::fs {

namespace {

std::string trimmed(std::string_view s) {
    size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b])))
        ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1])))
        --e;
    return std::string(s.substr(b, e - b));
}

struct KillOrder {
    int64_t pid = 0;
    int signal = 15;
};

// "PID [SIGNAL]\n"
ErrorOr<KillOrder> parse_kill_order(std::string_view text) {
    std::string line = trimmed(text);
    std::vector<std::string> parts;
    for (auto w : split(line, ' ')) {
        if (!w.empty()) parts.emplace_back(w);
    }
    if (parts.empty() || parts.size() > 2) return make_error(EINVAL, "expected \"PID [SIGNAL]\"");
    KillOrder order;
    char* end = nullptr;
    long long pid = std::strtoll(parts[0].c_str(), &end, 10);
    if (*end != '\0' || pid < 1 || pid > (1 << 22))
        return make_error(EINVAL, "bad pid " + parts[0]);
    order.pid = pid;
    if (parts.size() == 2) {
        auto signal = parse_signal(parts[1]);
        if (!signal) return make_error(EINVAL, "bad signal " + parts[1]);
        order.signal = *signal;
    }
    return order;
}

// The target's name and real uid, from the guest's /proc/PID/status.
struct Target {
    std::string name;
    std::optional<uid_t> uid;
    int64_t tgid = 0;
};

Target parse_status(const std::vector<uint8_t>& raw) {
    Target t;
    std::string text(raw.begin(), raw.end());
    for (auto line : split(text, '\n')) {
        if (line.starts_with("Name:")) t.name = trimmed(line.substr(5));
        if (line.starts_with("Tgid:"))
            t.tgid = std::strtoll(trimmed(line.substr(5)).c_str(), nullptr, 10);
        if (line.starts_with("Uid:")) {
            char* end = nullptr;
            std::string v = trimmed(line.substr(4));
            unsigned long uid = std::strtoul(v.c_str(), &end, 10);
            if (end != v.c_str()) t.uid = static_cast<uid_t>(uid);
        }
    }
    return t;
}

class KillHandle final : public FileHandle {
  public:
    explicit KillHandle(Vm& vm) : vm_(vm) {}
    ErrorOr<std::vector<uint8_t>> read(size_t, off_t) override {
        return make_error(EBADF, "ctl/kill is write-only");
    }
    ErrorOr<size_t> write(std::span<const uint8_t> data, off_t, const Caller& who) override {
        if (data.size() > 64) return make_error(EINVAL, "expected \"PID [SIGNAL]\"");
        auto order = TRY(parse_kill_order(
            std::string_view(reinterpret_cast<const char*>(data.data()), data.size())));
        if (order.pid == vm_.session().status().shadow_pid)
            return make_error(EACCES, "the pid is cloudvmi's own process in the guest");
        std::string proc = "/proc/" + std::to_string(order.pid);
        auto status = vm_.files().read_file(proc + "/status", 64 * 1024);
        if (!status && status.error().from_guest() && status.error().code() == ENOENT)
            return guest_error(ESRCH, "no process " + std::to_string(order.pid));
        if (!status) return std::unexpected(vm_error(status.error()));
        Target target = parse_status(*status);
        // A thread id would be decided on the thread's name and signal its whole process.
        if (target.tgid != order.pid)
            return make_error(EINVAL,
                              "pid " + std::to_string(order.pid) + " is a thread, not a process");
        ChangeAsk ask;
        ask.op = policy::Operation::kKill;
        ask.path = proc;
        ask.value = std::string(reinterpret_cast<const char*>(data.data()), data.size());
        ask.signal = order.signal;
        ask.target_name = target.name;
        ask.target_uid = target.uid;
        TRY(vm_.gate().apply(vm_.scope(), who, ask, [&]() -> ErrorOr<void> {
            auto killed = vm_.files().kill(order.pid, order.signal);
            if (!killed) return std::unexpected(vm_error(killed.error()));
            return {};
        }));
        return data.size();
    }

  private:
    Vm& vm_;
};

class KillFile final : public Node {
  public:
    explicit KillFile(Vm& vm) : vm_(vm) {}
    Vm* vm() const override { return &vm_; }
    bool local_getattr() const override { return true; }
    std::string key() const override { return "c:" + vm_.key() + ":kill"; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFREG | 0200), 1}; }
    ErrorOr<std::unique_ptr<FileHandle>> open(int flags, const Caller&) override {
        if ((flags & O_ACCMODE) != O_WRONLY) return make_error(EACCES, "ctl/kill is write-only");
        return std::unique_ptr<FileHandle>(std::make_unique<KillHandle>(vm_));
    }
    // The truncate of `echo ... > ctl/kill`: nothing to truncate.
    ErrorOr<NodeAttr> setattr(const AttrChange& change, const Caller&) override {
        if (change.size && *change.size == 0 && !change.mode && !change.uid && !change.gid)
            return getattr();
        return make_error(EACCES, "ctl/kill cannot be changed");
    }

  private:
    Vm& vm_;
};

class ControlDir final : public Node {
  public:
    explicit ControlDir(Vm& vm) : vm_(vm) {}
    std::string key() const override { return "c:" + vm_.key(); }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        if (name == "kill") return std::shared_ptr<Node>(std::make_shared<KillFile>(vm_));
        return make_error(ENOENT, name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        return std::vector<DirEntry>{
            DirEntry{"kill", S_IFREG, plus ? std::make_shared<KillFile>(vm_) : nullptr}};
    }

  private:
    Vm& vm_;
};

}  // namespace

std::shared_ptr<Node> make_control_dir(Vm& vm) {
    return std::make_shared<ControlDir>(vm);
}

}  // namespace cloudvmi::fs
