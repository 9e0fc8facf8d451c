#include "fake_guest.h"

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <iterator>
#include <map>
#include <sstream>
#include <utility>

#include "common/strings.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/shadow_process.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/test_helpers.h"

namespace cloudvmi::fake {

using namespace x86abi;

namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kUserEnd = 0x00007ffffffff000ULL;
constexpr uint64_t kMmapMin = 0x10000;
constexpr uint64_t kMmapBase = 0x7f7000000000ULL;
constexpr uint64_t kKernelStart = 0xffff800000000000ULL;
constexpr uint64_t kKstackBase = 0xffffc90000000000ULL;
constexpr uint64_t kKstackSize = 0x4000;
constexpr uint64_t kIdleRip = 0xffffffffae8f0e10ULL;
constexpr uint64_t kSwapperCr3 = 0x01000000ULL;
// Where each process's page-table root lives: kCr3Area + pid * kCr3Stride.
constexpr uint64_t kCr3Area = 0x10000000ULL;
constexpr uint64_t kCr3Stride = 0x100000ULL;
constexpr uint64_t kPercpuBase = 0xffff88807fc00000ULL;
constexpr uint16_t kUserCs = 0x33, kUserSs = 0x2b, kKernelCs = 0x10, kKernelSs = 0x18;
constexpr uint64_t kUserFlags = 0x246;
constexpr uint64_t kKernelFlags = 0x82;
// Host time a stop or a single step costs the client (see tick_limit()).
constexpr uint64_t kStopCostUs = 200;
constexpr uint64_t kStepCostUs = 50;

// Workload code page layout (offsets from ProcessSpec::code_base).
constexpr uint64_t kWlSyscall = 0x0;     // 0f 05
constexpr uint64_t kWlAfter = 0x2;       // checks the result, picks the next step
constexpr uint64_t kWlCompute = 0x10;    // user-mode work, then sets up the next syscall
constexpr uint64_t kWlHandler = 0x100;   // signal handler: returns to pretcode
constexpr uint64_t kWlRestorer = 0x200;  // mov eax, 15; syscall (rt_sigreturn)
constexpr uint64_t kStackLo = 0x7ffcfff00000ULL;
constexpr uint64_t kStackHi = 0x7ffd00000000ULL;
constexpr uint64_t kStackRsp = 0x7ffcffffedf8ULL;

constexpr uint64_t kWall = 0x40000000;
constexpr uint64_t kWclone = 0x80000000;
constexpr uint64_t kWnohang = 1;
constexpr uint64_t kPrGetSeccomp = 21;
constexpr uint64_t kRtSigreturn = 15;
constexpr uint64_t kThreadStackGap = 0x20000;  // between the stacks of a process's threads

// struct rt_sigframe (x86-64, arch/x86/include/asm/sigframe.h): pretcode, ucontext {flags,
// link, stack[24], mcontext[256], sigmask}, siginfo. uc_mcontext starts 40 bytes into the
// ucontext and begins with the general registers of struct sigcontext_64, in this order.
constexpr uint64_t kSigframeMcontextOffset = 8 + 40;
enum SigcontextReg : size_t {
    kScR8 = 0,
    kScR9,
    kScR10,
    kScR11,
    kScR12,
    kScR13,
    kScR14,
    kScR15,
    kScRdi,
    kScRsi,
    kScRbp,
    kScRbx,
    kScRdx,
    kScRax,
    kScRcx,
    kScRsp,
    kScRip,
    kScEflags,
    kScRegCount
};
constexpr uint64_t kFrameUcOffset = 8;
constexpr uint64_t kFrameSigmaskOffset = kSigframeMcontextOffset + 256;
constexpr uint64_t kFrameInfoOffset = kFrameSigmaskOffset + 8;
constexpr uint64_t kFrameSize = kFrameInfoOffset + 128;

using Page = std::array<uint8_t, 4096>;

bool is_user(uint64_t a) {
    return a != 0 && a < kUserEnd;
}
bool is_err(uint64_t v) {
    return is_error_result(v);
}
uint64_t neg(int e) {
    return static_cast<uint64_t>(-static_cast<int64_t>(e));
}
uint64_t page_down(uint64_t a) {
    return a & ~(kPageSize - 1);
}
uint64_t page_up(uint64_t a) {
    return (a + kPageSize - 1) & ~(kPageSize - 1);
}

std::string fixture_file(const std::string& name) {
    return "kernel-6.1.0-56-pti/" + name;
}

KernelEntryPoints entry_points_from(const std::map<std::string, uint64_t>& meta) {
    KernelEntryPoints k;
    k.syscall_entry = meta.at("entry");
    k.sysret = meta.at("sysret");
    k.slow_return = meta.at("slow_return");
    k.iret = meta.at("iret");
    k.idt_base = kLinuxIdtAddress;
    k.pti = true;
    return k;
}

// Offsets of the shadow payload's labels and `syscall` instructions.
struct PayloadMap {
    std::vector<uint8_t> bytes;
    uint64_t child = 0, clone_sys = 0, child_exit_sys = 0, park = 0, sleep_sys = 0, after = 0,
             run = 0, op_sys = 0, done = 0, exit = 0, exit_sys = 0;
};

const PayloadMap& payload() {
    static const PayloadMap m = [] {
        PayloadMap p;
        auto code = ShadowCode::bytes();
        p.bytes.assign(code.begin(), code.end());
        auto find_syscall = [&](uint64_t from) -> uint64_t {
            for (uint64_t i = from; i + 1 < p.bytes.size(); ++i) {
                if (p.bytes[i] == 0x0f && p.bytes[i + 1] == 0x05) return i;
            }
            return ~uint64_t{0};
        };
        p.child = ShadowCode::child_entry();
        p.clone_sys = find_syscall(p.child);
        p.child_exit_sys = find_syscall(p.clone_sys + 2);
        p.park = ShadowCode::park_loop();
        p.sleep_sys = ShadowCode::sleep_syscall();
        p.after = ShadowCode::after_sleep();
        p.run = ShadowCode::run_batch();
        p.op_sys = find_syscall(p.run);
        p.done = ShadowCode::batch_done();
        p.exit = ShadowCode::exit();
        p.exit_sys = find_syscall(p.exit);
        return p;
    }();
    return m;
}

}  // namespace

KernelEntryPoints fixture_entry_points() {
    return entry_points_from(test::read_hex_meta(fixture_file("meta.txt")));
}

// ---------------------------------------------------------------------------------------
// Guest objects

struct Vma {
    uint64_t start = 0, end = 0;
    bool shared = false;
    uint64_t prot = 0;
};

struct FakeGuest::Mm {
    uint64_t cr3_base = 0;
    std::map<uint64_t, Vma> vmas;  // by start
    std::map<uint64_t, std::shared_ptr<Page>> pages;

    const Vma* find(uint64_t va) const {
        auto it = vmas.upper_bound(va);
        if (it == vmas.begin()) return nullptr;
        --it;
        return va < it->second.end ? &it->second : nullptr;
    }
    bool overlaps(uint64_t s, uint64_t e) const {
        for (const auto& [start, v] : vmas) {
            if (v.start < e && s < v.end) return true;
        }
        return false;
    }
    void unmap(uint64_t s, uint64_t e) {
        std::vector<Vma> keep;
        for (auto it = vmas.begin(); it != vmas.end();) {
            Vma v = it->second;
            if (v.start < e && s < v.end) {
                it = vmas.erase(it);
                if (v.start < s) keep.push_back({v.start, s, v.shared, v.prot});
                if (e < v.end) keep.push_back({e, v.end, v.shared, v.prot});
            } else {
                ++it;
            }
        }
        for (const auto& v : keep)
            vmas[v.start] = v;
        for (auto it = pages.lower_bound(s); it != pages.end() && it->first < e;)
            it = pages.erase(it);
    }
    // mprotect: every page of [s, e) must be mapped.
    bool protect(uint64_t s, uint64_t e, uint64_t prot) {
        for (uint64_t a = s; a < e; a += kPageSize) {
            if (find(a) == nullptr) return false;
        }
        std::vector<Vma> parts;
        for (auto it = vmas.begin(); it != vmas.end();) {
            Vma v = it->second;
            if (v.start < e && s < v.end) {
                it = vmas.erase(it);
                if (v.start < s) parts.push_back({v.start, s, v.shared, v.prot});
                parts.push_back({std::max(v.start, s), std::min(v.end, e), v.shared, prot});
                if (e < v.end) parts.push_back({e, v.end, v.shared, v.prot});
            } else {
                ++it;
            }
        }
        for (const auto& v : parts)
            vmas[v.start] = v;
        return true;
    }
    void add(const Vma& v, bool populate) {
        vmas[v.start] = v;
        if (populate || v.shared) {
            for (uint64_t a = v.start; a < v.end; a += kPageSize) {
                if (!pages.count(a)) pages[a] = std::make_shared<Page>(Page{});
            }
        }
    }
    Mm fork_copy(uint64_t new_base) const {
        Mm c;
        c.cr3_base = new_base;
        c.vmas = vmas;
        for (const auto& [a, pg] : pages) {
            const Vma* v = find(a);
            c.pages[a] = (v && v->shared) ? pg : std::make_shared<Page>(*pg);
        }
        return c;
    }
    // Debugger access: present pages only, protections ignored.
    bool dbg_read(uint64_t va, std::span<uint8_t> out) const {
        size_t done = 0;
        while (done < out.size()) {
            uint64_t a = va + done;
            if (a < va || a >= kUserEnd) return false;
            auto it = pages.find(page_down(a));
            if (it == pages.end()) return false;
            size_t off = a - page_down(a);
            size_t n = std::min(out.size() - done, kPageSize - off);
            std::memcpy(out.data() + done, it->second->data() + off, n);
            done += n;
        }
        return true;
    }
    bool dbg_write(uint64_t va, std::span<const uint8_t> data) {
        // All or nothing, like a failing 'M' packet.
        for (uint64_t a = page_down(va); a < va + data.size(); a += kPageSize) {
            if (a >= kUserEnd || !pages.count(a)) return false;
        }
        size_t done = 0;
        while (done < data.size()) {
            uint64_t a = va + done;
            size_t off = a - page_down(a);
            size_t n = std::min(data.size() - done, kPageSize - off);
            std::memcpy(pages[page_down(a)]->data() + off, data.data() + done, n);
            done += n;
        }
        return true;
    }
};

struct FakeGuest::Node {
    enum class Type { kDir, kFile, kBlocking, kNull } type = Type::kFile;
    std::string content;
    uint32_t mode = 0644;
    uint32_t uid = 0;
    uint64_t ino = 0;
    bool readonly = false;  // procfs-like: no writes whatever the uid
};

struct OpenFile {
    std::string path;
    std::shared_ptr<FakeGuest::Node> node;
    uint64_t pos = 0;
    uint64_t flags = 0;
};

struct FakeGuest::Process {
    int64_t pid = 0, ppid = 0, pgid = 0, sid = 0;
    int64_t ns_pid = 0;  // in its own pid namespace, if not the initial one
    uint32_t uid = 0;
    std::string comm, mnt_ns, pid_ns, user_ns, exe, root = "/", cwd = "/";
    uint64_t seccomp = 0;
    std::set<uint64_t> seccomp_allowed;  // with a filter (seccomp != 0)
    bool deny_exec = false;
    bool zombie = false;
    int exit_status = 0;
    uint64_t exit_signal = kSigchld;
    Mm mm;
    std::map<int, OpenFile> fds;
    uint32_t umask = 022;
    uint64_t sigmask = 0;
    std::vector<int64_t> tids;
    bool workload = false;
    ProcessSpec spec;
    bool syscalls_blocked = false;
    uint64_t arg_start = 0, arg_end = 0;
    bool locked = false;
};

namespace {

// Pids as the process itself sees them: a container's init is pid 1 in its namespace,
// and its parent is outside it (0).
int64_t visible_pid(const FakeGuest::Process& p) {
    return p.ns_pid != 0 ? p.ns_pid : p.pid;
}
int64_t visible_ppid(const FakeGuest::Process& p) {
    return p.ns_pid == 1 ? 0 : p.ppid;
}

}  // namespace

struct FakeGuest::Thread {
    int64_t tid = 0, pid = 0;
    VcpuState cpu;
    SchedState sched = SchedState::kRunnable;
    int vcpu = 0;
    uint64_t kstack_top = 0;
    enum class Wait { kNone, kSleep, kWait4, kGate, kRead } wait = Wait::kNone;
    uint64_t wake_tick = 0;
    uint64_t read_generation = 0;
    uint64_t pending_nr = 0;
    std::array<uint64_t, 6> pending_args{};
    bool from_user = false;
    bool natural_entry = false;  // from_user, from the syscall its own program is at
    bool cur_natural = false;
    uint64_t own_syscall_at = 0;  // the `syscall` its program went to (0: none pending)
    bool needs_slow_entry = false;
    int pending_signal = 0;
    bool signal_injected_only = false;
    bool restart_next = false;
    bool slow_next = false;
    bool forced_injected_only = false;  // restart_next/slow_next: for an injected syscall only
    uint64_t slice = 0;
    // workload program state (user-mode, invisible to the host)
    bool in_prologue = true;
    size_t step = 0;
    int compute_left = 0;
    bool expecting = false;
    kvm_regs expect{};
    uint64_t expect_nr = 0;
    ThreadInfo ctr;
};

// ---------------------------------------------------------------------------------------
// Construction

FakeGuest::FakeGuest(FakeOptions options) : options_(std::move(options)) {
    auto meta = test::read_hex_meta(fixture_file("meta.txt"));
    kernel_ = entry_points_from(meta);
    // Kernel text: the entry page and the next one (the slow path), from the fixture.
    // entry_code.bin is not loaded: it is a slice of entry_page.bin (kernel_discovery_test
    // checks that).
    auto idt = test::read_bytes(fixture_file("idt.bin"));
    auto entry_page = test::read_bytes(fixture_file("entry_page.bin"));
    auto slow = test::read_bytes(fixture_file("slow_path.bin"));
    kmap(kLinuxIdtAddress, kPageSize, 0);
    kwrite(kLinuxIdtAddress, idt);
    uint64_t ep = meta.at("entry_page");
    kmap(ep, 2 * kPageSize, 0xcc);
    kwrite(ep, entry_page);
    kwrite(kernel_.slow_return, slow);

    vcpus_.resize(static_cast<size_t>(std::max(1, options_.vcpus)));
    for (auto& c : vcpus_) {
        c.idle.regs.rip = kIdleRip;
        c.idle.regs.rflags = 0x246;
        c.idle.regs.rsp = 0xffffffffaf203e80ULL;
        c.idle.sregs.cs.selector = kKernelCs;
        c.idle.sregs.ss.selector = kKernelSs;
        c.idle.sregs.cr3 = kSwapperCr3;
        c.idle.sregs.cr0 = 0x80050033;
        c.idle.sregs.cr4 = 0x3506f0;
        c.idle.sregs.efer = 0xd01;
        c.idle.sregs.gs.base = kPercpuBase;
    }

    // The file system.
    uint64_t ino = 2;
    auto add = [&](const std::string& path, Node::Type type, std::string content, uint32_t mode,
                   bool readonly = false) {
        auto n = std::make_shared<Node>();
        n->type = type;
        n->content = std::move(content);
        n->mode = mode;
        n->ino = ino++;
        n->readonly = readonly;
        fs_[path] = n;
    };
    add("/", Node::Type::kDir, "", 0755);
    add("/dev", Node::Type::kDir, "", 0755);
    add("/dev/null", Node::Type::kNull, "", 0666);
    add("/etc", Node::Type::kDir, "", 0755);
    add("/etc/cloudvmi-known", Node::Type::kFile, kKnownContent, 0644);
    add("/etc/secret", Node::Type::kFile, "root only\n", 0600);
    add("/proc", Node::Type::kDir, "", 0555, true);
    add("/proc/meminfo", Node::Type::kFile, kMeminfo, 0444, true);
    add("/proc/loadavg", Node::Type::kFile, "0.12 0.08 0.01 1/93 4121\n", 0444, true);
    add("/proc/version", Node::Type::kFile, "Linux version 6.1.0-56-amd64\n", 0444, true);
    add("/run", Node::Type::kDir, "", 0755);
    add("/run/blocking", Node::Type::kBlocking, "", 0666);
    add("/tmp", Node::Type::kDir, "", 01777);

    // Processes.
    ProcessSpec init;
    init.pid = kInitPid;
    init.comm = "init";
    init.loop = {Step::call(kWait4, {~uint64_t{0}, 0, kWall, 0}), Step::sleep(10)};
    if (options_.busy_init) init.loop = {Step::call(kGetpid)};
    create_process(init, 0);
    if (options_.sleeper) {
        ProcessSpec s;
        s.pid = kSleeperPid;
        s.comm = "sleeper";
        if (options_.sleeper_delay_ms > 0) s.prologue = {Step::sleep(options_.sleeper_delay_ms)};
        s.loop = {Step::sleep(1)};
        create_process(s, kInitPid);
    }
    if (options_.worker) {
        ProcessSpec w;
        w.pid = kWorkerPid;
        w.comm = "worker";
        w.uid = 1000;
        w.loop = {Step::call(kGetuid), Step::call(kGetpid, {}, 1)};
        create_process(w, kInitPid);
    }
    if (options_.container) {
        ProcessSpec c;
        c.pid = kContainerPid;
        c.comm = "container-app";
        c.mnt_ns = kContainerMntNs;
        c.loop = {Step::sleep(options_.container_sleep_ms)};
        create_process(c, kInitPid);
    }
    if (options_.band_process) {
        ProcessSpec b;
        b.pid = kBandPid;
        b.comm = "band";
        b.code_base = 0x7e4000000000ULL;
        b.loop = {Step::call(kGetpid), Step::sleep(1)};
        create_process(b, kInitPid);
    }
    for (const auto& spec : options_.extra)
        create_process(spec, kInitPid);
    schedule_idle_cpus();

    // Let it run a little, then "attach": the guest is stopped.
    running_ = true;
    advance(static_cast<uint64_t>(std::max(0, options_.warmup_ticks)));
    running_ = false;
    pending_stop_.reset();
}

FakeGuest::~FakeGuest() = default;

FakeGuest::Process& FakeGuest::create_process(const ProcessSpec& spec, int64_t ppid) {
    auto p = std::make_unique<Process>();
    p->pid = spec.pid != 0 ? spec.pid : next_pid_++;
    p->ppid = ppid;
    p->pgid = p->pid;
    p->sid = p->pid;
    p->ns_pid = spec.ns_pid;
    p->uid = spec.uid;
    p->comm = spec.comm.substr(0, 15);
    p->mnt_ns = spec.mnt_ns;
    p->pid_ns = spec.pid_ns;
    p->user_ns = spec.user_ns;
    p->exe = spec.exe.empty() ? "/usr/sbin/" + spec.comm : spec.exe;
    p->root = spec.root;
    p->seccomp = spec.seccomp;
    p->deny_exec = spec.deny_exec;
    p->workload = true;
    p->spec = spec;
    if (p->spec.loop.empty()) p->spec.loop = {Step::sleep(1000)};
    if (p->seccomp != 0) {
        // What a service's filter typically allows: its own syscalls, the harmless identity
        // queries and prctl.
        p->seccomp_allowed = {kGetpid, kGetppid, kGettid,    kGetuid,
                              kPrctl,  kExit,    kExitGroup, kRtSigreturn};
        for (const auto* steps : {&p->spec.prologue, &p->spec.loop}) {
            for (const auto& st : *steps)
                p->seccomp_allowed.insert(st.sleep_ms >= 0 ? uint64_t{kNanosleep} : st.nr);
        }
    }
    p->mm.cr3_base = kCr3Area + static_cast<uint64_t>(p->pid) * kCr3Stride;
    uint64_t code = spec.code_base;
    p->mm.add({code, code + kPageSize, false, kProtRead | kProtExec}, true);
    p->mm.add({code + kPageSize, code + 2 * kPageSize, false, kProtRead | kProtWrite}, true);
    p->mm.add({kStackLo, kStackHi, false, kProtRead | kProtWrite}, false);
    for (uint64_t a = kStackHi - 4 * kPageSize; a < kStackHi; a += kPageSize) {
        p->mm.pages[a] = std::make_shared<Page>(Page{});
    }
    Page& cp = *p->mm.pages[code];
    cp.fill(0x90);
    cp[kWlSyscall] = 0x0f;
    cp[kWlSyscall + 1] = 0x05;
    const uint8_t restorer[] = {0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};
    std::memcpy(cp.data() + kWlRestorer, restorer, sizeof restorer);
    // Timespecs for the program's sleeps, one slot per step.
    Page& dp = *p->mm.pages[code + kPageSize];
    size_t slot = 0;
    for (const auto* steps : {&p->spec.prologue, &p->spec.loop}) {
        for (const auto& s : *steps) {
            if (s.sleep_ms >= 0) {
                Timespec ts{s.sleep_ms / 1000, static_cast<int64_t>(s.sleep_ms % 1000) * 1000000};
                std::memcpy(dp.data() + 16 * slot, &ts, sizeof ts);
            }
            ++slot;
        }
    }
    p->arg_start = kStackHi - 0x100;
    p->arg_end = kStackHi - 0xe0;
    for (int fd = 0; fd < 3; ++fd)
        p->fds[fd] = OpenFile{"/dev/null", fs_["/dev/null"], 0, kORdwr};
    Process& ref = *p;
    processes_[ref.pid] = std::move(p);
    next_pid_ = std::max(next_pid_, ref.pid + 1);

    for (int i = 0; i < std::max(1, spec.threads); ++i) {
        Thread& t = create_thread(ref, i == 0 ? ref.pid : next_pid_++);
        kvm_regs& r = t.cpu.regs;
        uint64_t tid = static_cast<uint64_t>(t.tid);
        r.rbx = 0xb0b0000000000000ULL | tid;
        r.rbp = 0xb9b0000000000000ULL | tid;
        r.r12 = 0xc12c000000000000ULL | tid;
        r.r13 = 0xc13c000000000000ULL | tid;
        r.r14 = 0xc14c000000000000ULL | tid;
        r.r15 = 0xc15c000000000000ULL | tid;
        r.rsp = kStackRsp - static_cast<uint64_t>(i) * kThreadStackGap;
        r.rflags = kUserFlags;
        r.rip = code + kWlCompute;
        t.in_prologue = !ref.spec.prologue.empty();
        t.step = 0;
        t.compute_left = (t.in_prologue ? ref.spec.prologue[0] : ref.spec.loop[0]).compute_ticks;
        set_user_mode(t);
        make_runnable(t);
    }
    return ref;
}

FakeGuest::Thread& FakeGuest::create_thread(Process& p, int64_t tid) {
    auto t = std::make_unique<Thread>();
    t->tid = tid;
    t->pid = p.pid;
    t->kstack_top = kKstackBase + static_cast<uint64_t>(tid) * 0x10000ULL + kKstackSize;
    kmap(t->kstack_top - kKstackSize, kKstackSize, 0);
    t->cpu.sregs.cr0 = 0x80050033;
    t->cpu.sregs.cr4 = 0x3506f0;
    t->cpu.sregs.efer = 0xd01;
    t->cpu.sregs.fs.base = 0x7f1234560000ULL + static_cast<uint64_t>(tid) * 0x1000;
    t->ctr.tid = tid;
    t->ctr.pid = p.pid;
    p.tids.push_back(tid);
    Thread& ref = *t;
    threads_[tid] = std::move(t);
    return ref;
}

// ---------------------------------------------------------------------------------------
// Small helpers

FakeGuest::Thread* FakeGuest::thread_ptr(int64_t tid) const {
    auto it = threads_.find(tid);
    return it == threads_.end() ? nullptr : it->second.get();
}

FakeGuest::Process* FakeGuest::process_ptr(int64_t pid) const {
    auto it = processes_.find(pid);
    return it == processes_.end() ? nullptr : it->second.get();
}

FakeGuest::Process& FakeGuest::proc_of(const Thread& t) const {
    return *processes_.at(t.pid);
}

void FakeGuest::anomaly(std::string text) {
    anomalies_.push_back("tick " + std::to_string(tick_) + ": " + std::move(text));
}

std::string FakeGuest::anomalies_text() const {
    std::string s;
    for (const auto& a : anomalies_)
        s += a + "\n";
    return s;
}

bool FakeGuest::armed(uint64_t addr) const {
    auto it = breakpoints_.find(addr);
    return it != breakpoints_.end() && it->second > 0;
}

uint64_t FakeGuest::user_cr3(const Process& p) const {
    uint64_t pcid = 1 + static_cast<uint64_t>(p.pid) % 0x7fe;
    return p.mm.cr3_base | 0x1000 | 0x800 | pcid;
}

uint64_t FakeGuest::kernel_cr3(const Process& p) const {
    uint64_t pcid = 1 + static_cast<uint64_t>(p.pid) % 0x7fe;
    return p.mm.cr3_base | pcid;
}

void FakeGuest::set_user_mode(Thread& t) {
    auto& s = t.cpu.sregs;
    s.cs = kvm_segment{};
    s.cs.selector = kUserCs;
    s.cs.dpl = 3;
    s.cs.l = 1;
    s.cs.present = 1;
    s.ss = kvm_segment{};
    s.ss.selector = kUserSs;
    s.ss.dpl = 3;
    s.ss.present = 1;
    s.cr3 = user_cr3(proc_of(t));
    s.gs.base = 0;
    t.cpu.kernel_gs_base = kPercpuBase;
}

void FakeGuest::set_kernel_mode(Thread& t, bool with_user_cr3) {
    auto& s = t.cpu.sregs;
    s.cs = kvm_segment{};
    s.cs.selector = kKernelCs;
    s.cs.l = 1;
    s.cs.present = 1;
    s.ss = kvm_segment{};
    s.ss.selector = kKernelSs;
    s.ss.present = 1;
    Process& p = proc_of(t);
    s.cr3 = with_user_cr3 ? user_cr3(p) : kernel_cr3(p);
    s.gs.base = kPercpuBase;
    t.cpu.kernel_gs_base = 0;
}

// ---------------------------------------------------------------------------------------
// Memory

void FakeGuest::kmap(uint64_t va, size_t len, uint8_t fill) {
    for (uint64_t a = page_down(va); a < va + len; a += kPageSize) {
        auto& pg = kernel_pages_[a];
        if (!pg) {
            pg = std::make_unique<Page>();
            pg->fill(fill);
        }
    }
}

bool FakeGuest::kread(uint64_t va, std::span<uint8_t> out) const {
    size_t done = 0;
    while (done < out.size()) {
        uint64_t a = va + done;
        if (a < kKernelStart) return false;
        auto it = kernel_pages_.find(page_down(a));
        if (it == kernel_pages_.end()) return false;
        size_t off = a - page_down(a);
        size_t n = std::min(out.size() - done, kPageSize - off);
        std::memcpy(out.data() + done, it->second->data() + off, n);
        done += n;
        if (a + n < a) return done == out.size();
    }
    return true;
}

bool FakeGuest::kwrite(uint64_t va, std::span<const uint8_t> data) {
    for (uint64_t a = page_down(va); a < va + data.size() && a >= page_down(va); a += kPageSize) {
        if (a < kKernelStart || !kernel_pages_.count(a)) return false;
        if (a + kPageSize < a) break;
    }
    size_t done = 0;
    while (done < data.size()) {
        uint64_t a = va + done;
        size_t off = a - page_down(a);
        size_t n = std::min(data.size() - done, kPageSize - off);
        std::memcpy(kernel_pages_[page_down(a)]->data() + off, data.data() + done, n);
        done += n;
    }
    return true;
}

// The kernel touching user memory (copy_from_user/copy_to_user, or user code itself):
// checks the mapping and its protection, faults pages in.
bool FakeGuest::uread(Process& p, uint64_t va, std::span<uint8_t> out, bool exec) {
    size_t done = 0;
    while (done < out.size()) {
        uint64_t a = va + done;
        if (a < va || a >= kUserEnd) return false;
        const Vma* v = p.mm.find(a);
        if (v == nullptr || !(v->prot & (exec ? kProtExec : kProtRead))) return false;
        auto& pg = p.mm.pages[page_down(a)];
        if (!pg) pg = std::make_shared<Page>(Page{});
        size_t off = a - page_down(a);
        size_t n = std::min(out.size() - done, kPageSize - off);
        std::memcpy(out.data() + done, pg->data() + off, n);
        done += n;
    }
    return true;
}

bool FakeGuest::uwrite(Process& p, uint64_t va, std::span<const uint8_t> data) {
    for (uint64_t a = page_down(va); a < va + data.size(); a += kPageSize) {
        if (a >= kUserEnd) return false;
        const Vma* v = p.mm.find(a < va ? va : a);
        if (v == nullptr || !(v->prot & kProtWrite)) return false;
    }
    size_t done = 0;
    while (done < data.size()) {
        uint64_t a = va + done;
        auto& pg = p.mm.pages[page_down(a)];
        if (!pg) pg = std::make_shared<Page>(Page{});
        size_t off = a - page_down(a);
        size_t n = std::min(data.size() - done, kPageSize - off);
        std::memcpy(pg->data() + off, data.data() + done, n);
        done += n;
    }
    return true;
}

bool FakeGuest::uread64(Process& p, uint64_t va, uint64_t& v) {
    return uread(p, va, std::span(reinterpret_cast<uint8_t*>(&v), 8));
}

bool FakeGuest::uwrite64(Process& p, uint64_t va, uint64_t v) {
    return uwrite(p, va, std::span(reinterpret_cast<const uint8_t*>(&v), 8));
}

std::optional<std::string> FakeGuest::ustring(Process& p, uint64_t va, size_t max) {
    std::string s;
    for (size_t i = 0; i < max; ++i) {
        uint8_t c = 0;
        if (!uread(p, va + i, std::span(&c, 1))) return std::nullopt;
        if (c == 0) return s;
        s.push_back(static_cast<char>(c));
    }
    return s;
}

// ---------------------------------------------------------------------------------------
// Scheduling and process lifetime

void FakeGuest::make_runnable(Thread& t) {
    t.sched = SchedState::kRunnable;
    runqueue_.push_back(t.tid);
}

void FakeGuest::leave_cpu(Thread& t) {
    if (t.vcpu > 0 && vcpus_[static_cast<size_t>(t.vcpu - 1)].tid == t.tid) {
        vcpus_[static_cast<size_t>(t.vcpu - 1)].tid = 0;
    }
    t.vcpu = 0;
}

void FakeGuest::schedule_idle_cpus() {
    for (size_t v = 0; v < vcpus_.size(); ++v) {
        if (vcpus_[v].tid != 0) continue;
        while (!runqueue_.empty()) {
            int64_t tid = runqueue_.front();
            runqueue_.pop_front();
            Thread* t = thread_ptr(tid);
            if (t == nullptr || t->sched != SchedState::kRunnable) continue;
            t->sched = SchedState::kOnCpu;
            t->vcpu = static_cast<int>(v) + 1;
            t->slice = 0;
            vcpus_[v].tid = tid;
            if (t->needs_slow_entry) {
                // Back from an interrupt that preempted it in user mode.
                t->needs_slow_entry = false;
                kvm_regs user = t->cpu.regs;
                enter_slow_path(*t, user);
            }
            break;
        }
    }
}

void FakeGuest::exit_process(Process& p, int wait_status) {
    if (p.zombie) return;
    for (int64_t tid : p.tids) {
        Thread* t = thread_ptr(tid);
        if (t == nullptr) continue;
        leave_cpu(*t);
        t->sched = SchedState::kDead;
        t->wait = Thread::Wait::kNone;
    }
    p.zombie = true;
    p.exit_status = wait_status;
    p.mm.vmas.clear();
    p.mm.pages.clear();
    p.fds.clear();
    for (auto& [pid, c] : processes_) {
        if (c->ppid == p.pid) {
            c->ppid = kInitPid;
            c->exit_signal = kSigchld;
        }
    }
    if (p.pid == kInitPid) anomaly("init exited: the guest kernel panics");
}

void FakeGuest::reap(int64_t pid) {
    Process* p = process_ptr(pid);
    if (p == nullptr) return;
    for (int64_t tid : p->tids) {
        if (Thread* t = thread_ptr(tid)) {
            leave_cpu(*t);
            for (uint64_t a = t->kstack_top - kKstackSize; a < t->kstack_top; a += kPageSize) {
                kernel_pages_.erase(a);
            }
        }
        threads_.erase(tid);
    }
    processes_.erase(pid);
}

void FakeGuest::fault(Thread& t, const std::string& why, int sig) {
    Process& p = proc_of(t);
    anomaly("pid " + std::to_string(p.pid) + " (" + p.comm + ") killed by signal " +
            std::to_string(sig) + ": " + why);
    exit_process(p, sig);
}

// ---------------------------------------------------------------------------------------
// Time

// Deadlines are host (wall-clock) time. The host clock advances with the guest's ticks
// while it runs, and by a little for every stop and step the client handles (a real stub
// takes time to stop and restart the VM), so that a client looping on stops without
// letting the guest run still reaches its deadline.
uint64_t FakeGuest::tick_limit(Deadline deadline) {
    if (deadline.when() == Clock::time_point::max()) return host_us_ + 3600ULL * 1000 * 1000;
    auto it = deadline_ticks_.find(deadline.when());
    if (it != deadline_ticks_.end()) return it->second;
    auto left = deadline.when() - Clock::now();
    int64_t ms = std::max<int64_t>(0, std::chrono::ceil<Millis>(left).count());
    uint64_t limit = host_us_ + static_cast<uint64_t>(ms) * 1000;
    if (deadline_ticks_.size() > 4096) {
        for (auto i = deadline_ticks_.begin(); i != deadline_ticks_.end();) {
            i = i->second < host_us_ ? deadline_ticks_.erase(i) : std::next(i);
        }
    }
    deadline_ticks_[deadline.when()] = limit;
    return limit;
}

ErrorOr<StopEvent> FakeGuest::run_until(uint64_t limit_us) {
    while (true) {
        // An expired deadline wins even over a stop reply that is already queued: the
        // client polls once more and gives up (the reply is then read by interrupt()).
        if (host_us_ >= limit_us) {
            return make_error(ETIMEDOUT, "fake guest: no stop before the deadline");
        }
        if (pending_stop_) return take_stop();
        run_tick();
    }
}

StopEvent FakeGuest::take_stop() {
    StopEvent e = *pending_stop_;
    pending_stop_.reset();
    running_ = false;
    host_us_ += kStopCostUs;
    ++stats_.stops;
    if (e.reason == StopEvent::Reason::kBreakpoint) ++stats_.breakpoint_stops;
    return e;
}

void FakeGuest::run_tick() {
    int n = static_cast<int>(vcpus_.size());
    for (int k = 0; k < n; ++k) {
        int v = (rotation_ + k) % n;
        Vcpu& c = vcpus_[static_cast<size_t>(v)];
        if (c.tid == 0) {
            if (armed(c.idle.regs.rip)) {
                pending_stop_ = StopEvent{v + 1, StopEvent::Reason::kBreakpoint};
                rotation_ = v;
                return;
            }
            if (c.idle.regs.rip != kIdleRip) {
                anomaly("idle vCPU " + std::to_string(v + 1) + " was given rip " +
                        hex_u64(c.idle.regs.rip));
                c.idle.regs.rip = kIdleRip;
            }
            continue;
        }
        Thread& t = *threads_.at(c.tid);
        if (armed(t.cpu.regs.rip)) {
            pending_stop_ = StopEvent{v + 1, StopEvent::Reason::kBreakpoint};
            rotation_ = v;
            return;
        }
        execute(t);
        if (t.sched == SchedState::kOnCpu && t.cpu.user_mode()) ++t.slice;
    }
    end_of_tick();
}

void FakeGuest::end_of_tick() {
    ++tick_;
    host_us_ += 1000;
    rotation_ = (rotation_ + 1) % static_cast<int>(vcpus_.size());
    wake_blocked();
    // Preemption of user-mode threads that used up their slice.
    bool waiting = false;
    for (int64_t tid : runqueue_) {
        Thread* t = thread_ptr(tid);
        if (t && t->sched == SchedState::kRunnable) waiting = true;
    }
    if (waiting) {
        for (auto& c : vcpus_) {
            if (c.tid == 0) continue;
            Thread& t = *threads_.at(c.tid);
            if (t.cpu.user_mode() && t.slice >= static_cast<uint64_t>(options_.time_slice)) {
                leave_cpu(t);
                t.needs_slow_entry = true;
                make_runnable(t);
            }
        }
    }
    schedule_idle_cpus();
}

uint64_t FakeGuest::advance(uint64_t ticks) {
    uint64_t ran = 0;
    if (!running_) return 0;
    while (ran < ticks && !pending_stop_) {
        uint64_t before = tick_;
        run_tick();
        ran += tick_ - before;
    }
    return ran;
}

void FakeGuest::client_died(uint64_t ticks) {
    if (running_) advance(ticks);
    running_ = false;
    pending_stop_.reset();
    detached_ = false;
}

// ---------------------------------------------------------------------------------------
// Execution

void FakeGuest::execute(Thread& t) {
    uint64_t rip = t.cpu.regs.rip;
    if (rip == kernel_.syscall_entry) {
        kernel_syscall(t);
    } else if (rip == kernel_.sysret) {
        kernel_sysret(t);
    } else if (rip == kernel_.slow_return) {
        kernel_slow_return(t);
    } else if (rip == kernel_.iret) {
        kernel_iret(t);
    } else if (is_user(rip)) {
        if (!t.cpu.user_mode()) {
            fault(t, "kernel-mode thread at user address " + hex_u64(rip) + " (kernel oops)");
            return;
        }
        user_step(t);
    } else {
        fault(t, "thread executing unknown address " + hex_u64(rip) + " (kernel oops)");
    }
}

void FakeGuest::kernel_sysret(Thread& t) {
    kvm_regs& r = t.cpu.regs;
    if (!is_user(r.rcx)) {
        fault(t, "sysretq with non-user rcx " + hex_u64(r.rcx));
        return;
    }
    r.rip = r.rcx;
    r.rflags = (r.r11 & 0x3C7FD7) | 2;
    set_user_mode(t);
}

void FakeGuest::enter_slow_path(Thread& t, const kvm_regs& u) {
    // struct pt_regs on the kernel stack, as swapgs_restore_regs_and_return_to_usermode
    // finds it: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax
    // rip cs eflags rsp ss.
    uint64_t q[21] = {u.r15, u.r14,        u.r13, u.r12,   u.rbp,    u.rbx, u.r11,
                      u.r10, u.r9,         u.r8,  u.rax,   u.rcx,    u.rdx, u.rsi,
                      u.rdi, ~uint64_t{0}, u.rip, kUserCs, u.rflags, u.rsp, kUserSs};
    uint64_t at = t.kstack_top - sizeof q;
    kwrite(at, std::span(reinterpret_cast<const uint8_t*>(q), sizeof q));
    kvm_regs& r = t.cpu.regs;
    // Whatever the kernel had in its registers on the way out.
    uint64_t g = 0xffff888000000000ULL | (static_cast<uint64_t>(t.tid) << 12);
    r.rax = g | 0x10;
    r.rbx = g | 0x20;
    r.rcx = g | 0x30;
    r.rdx = g | 0x40;
    r.rsi = g | 0x50;
    r.rdi = g | 0x60;
    r.rbp = g | 0x70;
    r.r8 = g | 0x80;
    r.r9 = g | 0x90;
    r.r10 = g | 0xa0;
    r.r11 = g | 0xb0;
    r.r12 = g | 0xc0;
    r.r13 = g | 0xd0;
    r.r14 = g | 0xe0;
    r.r15 = g | 0xf0;
    r.rsp = at;
    r.rip = kernel_.slow_return;
    r.rflags = kKernelFlags;
    set_kernel_mode(t, false);
}

void FakeGuest::kernel_slow_return(Thread& t) {
    kvm_regs& r = t.cpu.regs;
    uint64_t q[21];
    if (!kread(r.rsp, std::span(reinterpret_cast<uint8_t*>(q), sizeof q))) {
        fault(t, "slow return path with rsp " + hex_u64(r.rsp) + " not on a kernel stack");
        return;
    }
    r.r15 = q[0];
    r.r14 = q[1];
    r.r13 = q[2];
    r.r12 = q[3];
    r.rbp = q[4];
    r.rbx = q[5];
    r.r11 = q[6];
    r.r10 = q[7];
    r.r9 = q[8];
    r.r8 = q[9];
    r.rax = q[10];
    r.rcx = q[11];
    r.rdx = q[12];
    r.rsi = q[13];
    r.rdi = q[14];
    r.rsp = r.rsp + 16 * 8;  // the iret frame
    r.rip = kernel_.iret;
    set_kernel_mode(t, true);  // SWITCH_TO_USER_CR3 happened on the way
}

void FakeGuest::kernel_iret(Thread& t) {
    kvm_regs& r = t.cpu.regs;
    uint64_t f[5];
    if (!kread(r.rsp, std::span(reinterpret_cast<uint8_t*>(f), sizeof f))) {
        fault(t, "iretq with rsp " + hex_u64(r.rsp) + " not on a kernel stack");
        return;
    }
    if ((f[1] & 3) != 3 || !is_user(f[0])) {
        fault(t, "iretq to a non-user frame (rip " + hex_u64(f[0]) + ", cs " + hex_u64(f[1]) + ")");
        return;
    }
    r.rip = f[0];
    r.rflags = f[2];
    r.rsp = f[3];
    set_user_mode(t);
    t.cpu.sregs.cs.selector = static_cast<uint16_t>(f[1]);
    t.cpu.sregs.ss.selector = static_cast<uint16_t>(f[4]);
}

void FakeGuest::enter_syscall_from_user(Thread& t) {
    kvm_regs& r = t.cpu.regs;
    t.natural_entry = r.rip == t.own_syscall_at;
    t.own_syscall_at = 0;
    r.rcx = r.rip + 2;
    r.r11 = r.rflags;
    r.rflags = kKernelFlags;
    r.rip = kernel_.syscall_entry;
    set_kernel_mode(t, true);
    t.from_user = true;
}

void FakeGuest::kernel_syscall(Thread& t) {
    bool natural = t.from_user && t.natural_entry;
    t.from_user = false;
    t.natural_entry = false;
    t.cur_natural = natural;
    if (natural) {
        ++t.ctr.natural_syscalls;
    } else {
        ++t.ctr.injected_syscalls;
        ++t.ctr.injected_by_nr[t.cpu.regs.rax];
    }
    set_kernel_mode(t, false);
    kvm_regs& r = t.cpu.regs;
    std::array<uint64_t, 6> a = {r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9};
    t.pending_nr = r.rax;
    t.pending_args = a;
    Process& p = proc_of(t);
    if (p.seccomp != 0 && !p.seccomp_allowed.count(r.rax)) {
        fault(t, "syscall " + std::to_string(r.rax) + " denied by its seccomp filter", 31);
        return;
    }
    if (p.syscalls_blocked && r.rax != kExit && r.rax != kExitGroup) {
        t.sched = SchedState::kBlocked;
        t.wait = Thread::Wait::kGate;
        leave_cpu(t);
        return;
    }
    Outcome o = dispatch(t, r.rax, a);
    if (o.kind == Outcome::kDone) complete_syscall(t, o.value);
}

void FakeGuest::complete_syscall(Thread& t, uint64_t value) {
    kvm_regs& r = t.cpu.regs;
    Process& p = proc_of(t);
    if (p.zombie || t.sched == SchedState::kDead) return;
    bool forced = !(t.forced_injected_only && t.cur_natural);
    if (t.restart_next && forced) {
        // -ERESTARTNOINTR and friends: back to the syscall instruction with the original rax.
        t.restart_next = false;
        ++t.ctr.restarts;
        kvm_regs u = r;
        u.rax = t.pending_nr;
        u.rip = r.rcx - 2;
        u.rflags = r.r11;
        if (t.cur_natural) t.own_syscall_at = u.rip;
        enter_slow_path(t, u);
        return;
    }
    r.rax = value;
    if (t.pending_signal != 0 && !((p.sigmask >> (t.pending_signal - 1)) & 1) &&
        !(t.signal_injected_only && t.cur_natural)) {
        deliver_signal(t, t.pending_signal);
        return;
    }
    if (t.slow_next && forced) {
        t.slow_next = false;
        ++t.ctr.slow_returns;
        kvm_regs u = r;
        u.rip = r.rcx;
        u.rflags = r.r11;
        enter_slow_path(t, u);
        return;
    }
    r.rip = kernel_.sysret;
    r.rflags = kKernelFlags;
    set_kernel_mode(t, true);
    if (t.cur_natural) t.ctr.last_natural_sysret = r;
}

void FakeGuest::deliver_signal(Thread& t, int signo) {
    Process& p = proc_of(t);
    t.pending_signal = 0;
    if (!p.workload) {
        exit_process(p, signo);  // no handler: the default action terminates
        return;
    }
    kvm_regs& r = t.cpu.regs;
    kvm_regs u = r;
    u.rip = r.rcx;
    u.rflags = r.r11;
    uint64_t frame = ((u.rsp - 128 - kFrameSize) & ~uint64_t{15}) - 8;
    std::vector<uint8_t> f(kFrameSize, 0);
    auto put = [&](uint64_t off, uint64_t v) { std::memcpy(f.data() + off, &v, 8); };
    put(0, p.spec.code_base + kWlRestorer);
    uint64_t sc[kScRegCount] = {u.r8,  u.r9,  u.r10, u.r11, u.r12, u.r13, u.r14, u.r15, u.rdi,
                                u.rsi, u.rbp, u.rbx, u.rdx, u.rax, u.rcx, u.rsp, u.rip, u.rflags};
    std::memcpy(f.data() + kSigframeMcontextOffset, sc, sizeof sc);
    put(kSigframeMcontextOffset + 8 * kScRegCount, kUserCs | (uint64_t{kUserSs} << 48));
    put(kSigframeMcontextOffset + 8 * kScRegCount + 24, p.sigmask);  // oldmask
    put(kFrameSigmaskOffset, p.sigmask);
    put(kFrameInfoOffset, static_cast<uint64_t>(signo));
    if (!uwrite(p, frame, f)) {
        fault(t, "cannot write the signal frame at " + hex_u64(frame));
        return;
    }
    kvm_regs h = u;
    h.rip = p.spec.code_base + kWlHandler;
    h.rsp = frame;
    h.rdi = static_cast<uint64_t>(signo);
    h.rsi = frame + kFrameInfoOffset;
    h.rdx = frame + kFrameUcOffset;
    h.rax = 0;
    h.rflags = u.rflags & ~uint64_t{0x40500};  // TF, DF, AC cleared
    ++t.ctr.signals_delivered;
    enter_slow_path(t, h);
}

uint64_t FakeGuest::sys_rt_sigreturn(Thread& t) {
    Process& p = proc_of(t);
    kvm_regs& r = t.cpu.regs;
    uint64_t frame = r.rsp - 8;
    uint64_t sc[kScRegCount];
    if (!uread(p, frame + kSigframeMcontextOffset,
               std::span(reinterpret_cast<uint8_t*>(sc), sizeof sc))) {
        fault(t, "rt_sigreturn with a bad frame at " + hex_u64(frame));
        return 0;
    }
    kvm_regs u = r;
    u.r8 = sc[kScR8];
    u.r9 = sc[kScR9];
    u.r10 = sc[kScR10];
    u.r11 = sc[kScR11];
    u.r12 = sc[kScR12];
    u.r13 = sc[kScR13];
    u.r14 = sc[kScR14];
    u.r15 = sc[kScR15];
    u.rdi = sc[kScRdi];
    u.rsi = sc[kScRsi];
    u.rbp = sc[kScRbp];
    u.rbx = sc[kScRbx];
    u.rdx = sc[kScRdx];
    u.rax = sc[kScRax];
    u.rcx = sc[kScRcx];
    u.rsp = sc[kScRsp];
    u.rip = sc[kScRip];
    u.rflags = (sc[kScEflags] & 0x3C7FD7) | 2;
    uint64_t mask = 0;
    if (uread64(p, frame + kFrameSigmaskOffset, mask))
        p.sigmask = mask & ~((1ULL << 8) | (1ULL << 18));
    ++t.ctr.sigreturns;
    t.ctr.last_sigreturn = u;
    if (!is_user(u.rip)) {
        fault(t, "rt_sigreturn to non-user rip " + hex_u64(u.rip));
        return 0;
    }
    if (u.rcx == u.rip && u.r11 == u.rflags) {
        // do_syscall_64 allows sysretq.
        r = u;
        r.rip = kernel_.sysret;
        r.rflags = kKernelFlags;
        set_kernel_mode(t, true);
        if (t.cur_natural) t.ctr.last_natural_sysret = r;
    } else {
        enter_slow_path(t, u);
    }
    return 0;
}

// --- user mode ---

void FakeGuest::user_step(Thread& t) {
    Process& p = proc_of(t);
    kvm_regs& r = t.cpu.regs;
    uint8_t b[2] = {};
    if (uread(p, r.rip, std::span(b, 2), true) && b[0] == 0x0f && b[1] == 0x05) {
        enter_syscall_from_user(t);
        return;
    }
    if (p.workload && r.rip >= p.spec.code_base && r.rip < p.spec.code_base + kPageSize) {
        workload_step(t, r.rip - p.spec.code_base);
        return;
    }
    if (auto base = shadow_base(p, r.rip)) {
        payload_step(t, *base, r.rip - *base);
        return;
    }
    fault(t, "user code at " + hex_u64(r.rip) + " is not understood (SIGSEGV)");
}

void FakeGuest::workload_check(Thread& t) {
    if (!t.expecting) return;
    Process& p = proc_of(t);
    const kvm_regs& r = t.cpu.regs;
    const kvm_regs& e = t.expect;
    std::string bad;
    auto cmp = [&](const char* name, uint64_t got, uint64_t want) {
        if (got != want)
            bad += std::string(" ") + name + "=" + hex_u64(got) + " (want " + hex_u64(want) + ")";
    };
    cmp("rbx", r.rbx, e.rbx);
    cmp("rbp", r.rbp, e.rbp);
    cmp("r12", r.r12, e.r12);
    cmp("r13", r.r13, e.r13);
    cmp("r14", r.r14, e.r14);
    cmp("r15", r.r15, e.r15);
    cmp("rdi", r.rdi, e.rdi);
    cmp("rsi", r.rsi, e.rsi);
    cmp("rdx", r.rdx, e.rdx);
    cmp("r10", r.r10, e.r10);
    cmp("r8", r.r8, e.r8);
    cmp("r9", r.r9, e.r9);
    cmp("rsp", r.rsp, e.rsp);
    cmp("rcx", r.rcx, p.spec.code_base + kWlAfter);
    cmp("r11", r.r11, kUserFlags);
    cmp("rflags", r.rflags, kUserFlags);
    std::optional<uint64_t> want;
    switch (t.expect_nr) {
        case kGetpid:
            want = static_cast<uint64_t>(visible_pid(p));
            break;
        case kGetuid:
            want = p.uid;
            break;
        case kGettid:
            want = static_cast<uint64_t>(t.tid);
            break;
        case kGetppid:
            want = static_cast<uint64_t>(visible_ppid(p));
            break;
        case kNanosleep:
            if (r.rax != neg(EINTR)) want = 0;
            break;
        default:
            break;
    }
    if (want) cmp("rax", r.rax, *want);
    if (!bad.empty()) {
        anomaly("pid " + std::to_string(p.pid) + " (" + p.comm + ") back from syscall " +
                std::to_string(t.expect_nr) + " with corrupted registers:" + bad);
    } else {
        ++t.ctr.checked_returns;
    }
    t.expecting = false;
}

void FakeGuest::workload_next(Thread& t) {
    Process& p = proc_of(t);
    ++t.step;
    if (t.in_prologue && t.step >= p.spec.prologue.size()) {
        t.in_prologue = false;
        t.step = 0;
    }
    if (!t.in_prologue && t.step >= p.spec.loop.size()) t.step = 0;
    t.compute_left = (t.in_prologue ? p.spec.prologue[t.step] : p.spec.loop[t.step]).compute_ticks;
}

void FakeGuest::workload_step(Thread& t, uint64_t off) {
    Process& p = proc_of(t);
    kvm_regs& r = t.cpu.regs;
    uint64_t code = p.spec.code_base;
    if (off == kWlAfter) {
        workload_check(t);
        workload_next(t);
        r.rip = code + kWlCompute;
        return;
    }
    if (off == kWlCompute) {
        if (t.compute_left > 0) {
            --t.compute_left;
            return;
        }
        const Step& s = t.in_prologue ? p.spec.prologue[t.step] : p.spec.loop[t.step];
        size_t slot = t.in_prologue ? t.step : p.spec.prologue.size() + t.step;
        uint64_t nr = s.nr;
        std::array<uint64_t, 6> a = s.args;
        if (s.sleep_ms >= 0) {
            nr = kNanosleep;
            a = {code + kPageSize + 16 * slot, 0, 0, 0, 0, 0};
        }
        r.rax = nr;
        r.rdi = a[0];
        r.rsi = a[1];
        r.rdx = a[2];
        r.r10 = a[3];
        r.r8 = a[4];
        r.r9 = a[5];
        t.expect = r;
        t.expect_nr = nr;
        t.expecting = true;
        r.rip = code + kWlSyscall;
        t.own_syscall_at = r.rip;
        return;
    }
    if (off == kWlHandler) {
        ++t.ctr.handler_runs;
        uint64_t ret = 0;
        if (!uread64(p, r.rsp, ret)) {
            fault(t, "signal handler cannot return: bad stack " + hex_u64(r.rsp));
            return;
        }
        r.rip = ret;
        r.rsp += 8;
        return;
    }
    if (off == kWlRestorer) {
        r.rax = kRtSigreturn;
        r.rip = code + kWlRestorer + 5;
        t.own_syscall_at = r.rip;
        return;
    }
    fault(t, "workload jumped to " + hex_u64(r.rip) + " (SIGSEGV)");
}

std::optional<uint64_t> FakeGuest::shadow_base(const Process& p, uint64_t rip) const {
    const auto& m = payload();
    uint64_t base = page_down(rip);
    if (rip - base >= m.bytes.size()) return std::nullopt;
    auto it = p.mm.pages.find(base);
    if (it == p.mm.pages.end()) return std::nullopt;
    const Vma* v = p.mm.find(base);
    if (v == nullptr || !(v->prot & kProtExec)) return std::nullopt;
    if (std::memcmp(it->second->data(), m.bytes.data(), m.bytes.size()) != 0) return std::nullopt;
    return base;
}

// The shadow payload, label by label, with the registers and memory accesses of
// redirector/shadow/shadow_payload.S.
void FakeGuest::payload_step(Thread& t, uint64_t base, uint64_t off) {
    const auto& m = payload();
    Process& p = proc_of(t);
    kvm_regs& r = t.cpu.regs;
    uint64_t ctrl = base + SHADOW_CTRL_OFFSET;
    if (off == m.child) {
        r.rbx = ctrl;
        r.rax = kClone;
        r.rdi = kSigchld;
        r.rsi = r.rdx = r.r10 = r.r8 = r.r9 = 0;
        r.rip = base + m.clone_sys;
    } else if (off == m.clone_sys + 2) {
        if (r.rax == 0) {
            r.rip = base + m.park;
            return;
        }
        if (!uwrite64(p, r.rbx + CTRL_S2_PID, r.rax)) {
            fault(t, "shadow helper cannot report the shadow's pid");
            return;
        }
        r.rdi = static_cast<int64_t>(r.rax) < 0 ? 1 : 0;
        r.rax = kExitGroup;
        r.rip = base + m.child_exit_sys;
    } else if (off == m.park) {
        r.rbx = ctrl;
        payload_loop(t, base);
    } else if (off == m.after) {
        r.rbx = ctrl;
        uint64_t cur = 0, max = 0;
        if (!uread64(p, r.rbx + CTRL_SLEEP_CUR, cur) || !uread64(p, r.rbx + CTRL_SLEEP_MAX, max)) {
            fault(t, "shadow control block unreadable");
            return;
        }
        cur += cur;
        if (cur > max) cur = max;
        r.rax = cur;
        if (!uwrite64(p, r.rbx + CTRL_SLEEP_CUR, cur)) {
            fault(t, "shadow control block unwritable");
            return;
        }
        payload_loop(t, base);
    } else if (off == m.run) {
        r.rbx = ctrl;
        r.rbp = base + SHADOW_OPS_OFFSET + BATCH_HEADER_SIZE;
        uint64_t count = 0;
        if (!uread64(p, base + SHADOW_OPS_OFFSET + BATCH_NOPS, count)) {
            fault(t, "shadow batch header unreadable");
            return;
        }
        r.r14 = std::min<uint64_t>(count, SHADOW_MAX_OPS);
        r.r13 = 0;
        r.r15 = 0;
        payload_ops(t, base);
    } else if (off == m.op_sys + 2) {
        if (!uwrite64(p, r.r12 + OP_RESULT, r.rax)) {
            fault(t, "shadow op record unwritable");
            return;
        }
        uint64_t flags = 0;
        if (is_err(r.rax)) {
            if (!uread64(p, r.r12 + OP_FLAGS, flags)) {
                fault(t, "shadow op record unreadable");
                return;
            }
            if (flags & OPF_STOP_ON_ERROR) r.r15 = 1;
        }
        ++r.r13;
        payload_ops(t, base);
    } else if (off == m.done) {
        payload_loop(t, base);  // jmp .Lloop, rbx as it is
    } else if (off == m.exit) {
        r.rax = kExitGroup;
        r.rdi = 0;
        r.rip = base + m.exit_sys;
    } else {
        fault(t, "shadow code executed at +" + hex_u64(off) + " (ud2 or garbage: SIGILL)", 4);
    }
}

void FakeGuest::payload_loop(Thread& t, uint64_t base) {
    const auto& m = payload();
    Process& p = proc_of(t);
    kvm_regs& r = t.cpu.regs;
    uint64_t hb = 0, lease = 0, req = 0, done = 0, cur = 0;
    if (!uread64(p, r.rbx + CTRL_HEARTBEAT, hb) || !uwrite64(p, r.rbx + CTRL_HEARTBEAT, hb + 1) ||
        !uread64(p, r.rbx + CTRL_LEASE, lease) || !uwrite64(p, r.rbx + CTRL_LEASE, lease - 1)) {
        fault(t, "shadow park loop: control block at " + hex_u64(r.rbx) + " unusable");
        return;
    }
    if (lease - 1 == 0) {
        r.rip = base + m.exit;
        return;
    }
    if (!uread64(p, r.rbx + CTRL_REQ_SEQ, req) || !uread64(p, r.rbx + CTRL_DONE_SEQ, done)) {
        fault(t, "shadow park loop: control block unreadable");
        return;
    }
    r.rax = req;
    if (req != done) {
        r.rip = base + m.run;
        return;
    }
    if (!uread64(p, r.rbx + CTRL_SLEEP_CUR, cur) || !uwrite64(p, r.rbx + CTRL_TS_SEC, 0) ||
        !uwrite64(p, r.rbx + CTRL_TS_NSEC, cur)) {
        fault(t, "shadow park loop: control block unusable");
        return;
    }
    r.rax = kNanosleep;
    r.rdi = r.rbx + CTRL_TS_SEC;
    r.rsi = 0;
    r.rip = base + m.sleep_sys;
}

void FakeGuest::payload_ops(Thread& t, uint64_t base) {
    const auto& m = payload();
    Process& p = proc_of(t);
    kvm_regs& r = t.cpu.regs;
    auto rd = [&](uint64_t a, uint64_t& v) { return uread64(p, a, v); };
    auto wr = [&](uint64_t a, uint64_t v) { return uwrite64(p, a, v); };
    while (true) {
        if (r.r13 >= r.r14) {
            uint64_t req = 0, min = 0;
            if (!rd(r.rbx + CTRL_REQ_SEQ, req) || !wr(r.rbx + CTRL_DONE_SEQ, req) ||
                !rd(r.rbx + CTRL_SLEEP_MIN, min) || !wr(r.rbx + CTRL_SLEEP_CUR, min)) {
                fault(t, "shadow batch end: control block unusable");
                return;
            }
            r.rax = min;
            r.rip = base + m.done;
            return;
        }
        r.r12 = r.r13 * OP_SIZE + r.rbp;
        if (r.r15 != 0) {
            if (!wr(r.r12 + OP_RESULT, neg(ECANCELED))) break;
            ++r.r13;
            continue;
        }
        uint64_t refs = 0;
        if (!rd(r.r12 + OP_REFS, refs)) break;
        r.rdx = refs;
        bool bad_ref = false, cancel = false;
        for (uint64_t c = 0; c < 6; ++c) {
            r.rcx = c;
            if (!((refs >> c) & 1)) continue;
            uint64_t idx = 0, res = 0;
            if (!rd(r.r12 + OP_ARGS + 8 * c, idx)) goto fail;
            r.rax = idx;
            if (idx >= r.r13) {
                bad_ref = true;
                break;
            }
            if (!rd(r.rbp + idx * OP_SIZE + OP_RESULT, res)) goto fail;
            r.rax = res;
            if (is_err(res)) {
                cancel = true;
                break;
            }
            if (!wr(r.r12 + OP_ARGS + 8 * c, res)) goto fail;
        }
        if (bad_ref) {
            r.rax = neg(EINVAL);
            uint64_t flags = 0;
            if (!wr(r.r12 + OP_RESULT, r.rax) || !rd(r.r12 + OP_FLAGS, flags)) break;
            if (flags & OPF_STOP_ON_ERROR) r.r15 = 1;
            ++r.r13;
            continue;
        }
        if (cancel) {
            if (!wr(r.r12 + OP_RESULT, neg(ECANCELED))) break;
            ++r.r13;
            continue;
        }
        {
            uint64_t v[7];
            if (!uread(p, r.r12 + OP_NR, std::span(reinterpret_cast<uint8_t*>(v), sizeof v))) break;
            r.rax = v[0];
            r.rdi = v[1];
            r.rsi = v[2];
            r.rdx = v[3];
            r.r10 = v[4];
            r.r8 = v[5];
            r.r9 = v[6];
            r.rip = base + m.op_sys;
            return;
        }
    }
fail:
    fault(t, "shadow batch: op records unusable");
}

// ---------------------------------------------------------------------------------------
// Syscalls

void FakeGuest::wake_blocked() {
    std::vector<int64_t> tids;
    for (const auto& [tid, t] : threads_) {
        if (t->sched == SchedState::kBlocked) tids.push_back(tid);
    }
    for (int64_t tid : tids) {
        Thread* t = thread_ptr(tid);
        if (t == nullptr || t->sched != SchedState::kBlocked) continue;
        Process& p = proc_of(*t);
        std::optional<uint64_t> result;
        bool interruptible = t->wait != Thread::Wait::kGate;
        bool signal = t->pending_signal != 0 && !((p.sigmask >> (t->pending_signal - 1)) & 1) &&
                      !(t->signal_injected_only && t->cur_natural);
        bool restart = t->restart_next && !(t->forced_injected_only && t->cur_natural);
        if (interruptible && (signal || restart)) {
            result = neg(EINTR);
        } else {
            switch (t->wait) {
                case Thread::Wait::kSleep:
                    if (tick_ >= t->wake_tick) result = 0;
                    break;
                case Thread::Wait::kWait4:
                    result = try_wait4(*t, t->pending_args);
                    break;
                case Thread::Wait::kRead:
                    if (t->read_generation != blocking_generation_) result = 0;
                    break;
                case Thread::Wait::kGate:
                    if (!p.syscalls_blocked) {
                        t->wait = Thread::Wait::kNone;
                        Outcome o = dispatch(*t, t->pending_nr, t->pending_args);
                        if (o.kind == Outcome::kDone) {
                            result = o.value;
                        } else if (o.kind == Outcome::kNoReturn && t->sched != SchedState::kDead) {
                            make_runnable(*t);
                        }
                    }
                    break;
                case Thread::Wait::kNone:
                    break;
            }
        }
        if (!result) continue;
        t = thread_ptr(tid);
        if (t == nullptr || t->sched == SchedState::kDead) continue;
        t->wait = Thread::Wait::kNone;
        complete_syscall(*t, *result);
        if (t->sched != SchedState::kDead) make_runnable(*t);
    }
}

std::optional<uint64_t> FakeGuest::try_wait4(Thread& t, const std::array<uint64_t, 6>& a) {
    Process& p = proc_of(t);
    int64_t want = static_cast<int64_t>(a[0]);
    uint64_t options = a[2];
    std::vector<Process*> eligible;
    for (auto& [pid, c] : processes_) {
        if (c->ppid != p.pid || c->pid == p.pid) continue;
        if (want > 0 && c->pid != want) continue;
        bool clone_child = c->exit_signal != kSigchld;
        if (!(options & kWall) && clone_child != static_cast<bool>(options & kWclone)) continue;
        eligible.push_back(c.get());
    }
    if (eligible.empty()) return neg(ECHILD);
    for (Process* c : eligible) {
        if (!c->zombie) continue;
        int64_t pid = c->pid;
        uint64_t res = static_cast<uint64_t>(pid);
        if (a[1] != 0) {
            int32_t status = c->exit_status;
            if (!uwrite(p, a[1], std::span(reinterpret_cast<const uint8_t*>(&status), 4))) {
                res = neg(EFAULT);
            }
        }
        reap(pid);
        return res;
    }
    if (options & kWnohang) return 0;
    return std::nullopt;
}

FakeGuest::Outcome FakeGuest::dispatch(Thread& t, uint64_t nr, const std::array<uint64_t, 6>& a) {
    Process& p = proc_of(t);
    auto done = [](uint64_t v) { return Outcome{Outcome::kDone, v}; };
    auto block = [&](Thread::Wait w) {
        t.sched = SchedState::kBlocked;
        t.wait = w;
        leave_cpu(t);
        return Outcome{Outcome::kBlocked, 0};
    };
    switch (nr) {
        case kRead:
        case kPread64: {
            bool must_block = false;
            uint64_t v = sys_read(t, a, nr == kPread64, must_block);
            if (must_block) {
                t.read_generation = blocking_generation_;
                return block(Thread::Wait::kRead);
            }
            return done(v);
        }
        case kWrite: {
            auto it = p.fds.find(static_cast<int>(a[0]));
            if (it == p.fds.end() || (it->second.flags & kOAccmode) == kORdonly)
                return done(neg(EBADF));
            std::vector<uint8_t> buf(std::min<uint64_t>(a[2], 1 << 20));
            if (!uread(p, a[1], buf)) return done(neg(EFAULT));
            auto& n = *it->second.node;
            if (n.type == Node::Type::kFile) {
                if (n.content.size() < it->second.pos) n.content.resize(it->second.pos);
                n.content.replace(it->second.pos, buf.size(), std::string(buf.begin(), buf.end()));
                it->second.pos += buf.size();
            }
            return done(buf.size());
        }
        case kClose:
            return done(p.fds.erase(static_cast<int>(a[0])) ? 0 : neg(EBADF));
        case kMmap:
            return done(sys_mmap(p, a));
        case kMunmap:
            return done(sys_munmap(p, a[0], a[1]));
        case kMprotect:
            return done(sys_mprotect(p, a[0], a[1], a[2]));
        case kRtSigprocmask: {
            if (a[3] != 8) return done(neg(EINVAL));
            uint64_t old = p.sigmask;
            if (a[1] != 0) {
                uint64_t set = 0;
                if (!uread64(p, a[1], set)) return done(neg(EFAULT));
                uint64_t mask = p.sigmask;
                switch (a[0]) {
                    case 0:
                        mask |= set;
                        break;
                    case 1:
                        mask &= ~set;
                        break;
                    case 2:
                        mask = set;
                        break;
                    default:
                        return done(neg(EINVAL));
                }
                p.sigmask = mask & ~((1ULL << 8) | (1ULL << 18));
            }
            if (a[2] != 0 && !uwrite64(p, a[2], old)) return done(neg(EFAULT));
            return done(0);
        }
        case kRtSigreturn:
            sys_rt_sigreturn(t);
            return Outcome{Outcome::kNoReturn, 0};
        case kNanosleep: {
            Timespec ts{};
            if (!uread(p, a[0], std::span(reinterpret_cast<uint8_t*>(&ts), sizeof ts))) {
                return done(neg(EFAULT));
            }
            if (ts.tv_sec < 0 || ts.tv_nsec < 0 || ts.tv_nsec >= 1000000000)
                return done(neg(EINVAL));
            uint64_t ticks = static_cast<uint64_t>(ts.tv_sec) * 1000 +
                             (static_cast<uint64_t>(ts.tv_nsec) + 999999) / 1000000;
            if (ticks == 0) return done(0);
            t.wake_tick = tick_ + ticks;
            return block(Thread::Wait::kSleep);
        }
        case kGetpid:
            return done(static_cast<uint64_t>(visible_pid(p)));
        case kGettid:
            return done(static_cast<uint64_t>(t.tid));
        case kGetppid:
            return done(static_cast<uint64_t>(visible_ppid(p)));
        case kGetsid:
            return done(sys_getsid(p, as_signed(a[0])));
        case kGetuid:
            return done(p.uid);
        case kClone:
            return done(sys_clone(t, a));
        case kExit:
        case kExitGroup:
            exit_process(p, static_cast<int>((a[0] & 0xff) << 8));
            return Outcome{Outcome::kNoReturn, 0};
        case kWait4: {
            auto r = try_wait4(t, a);
            if (r) return done(*r);
            return block(Thread::Wait::kWait4);
        }
        case kKill: {
            uint64_t v = sys_kill(p, static_cast<int64_t>(a[0]), static_cast<int>(a[1]));
            if (p.zombie) return Outcome{Outcome::kNoReturn, 0};
            return done(v);
        }
        case kUname: {
            std::vector<uint8_t> u(kUtsnameSize, 0);
            const char* fields[6] = {"Linux",          "fakeguest",
                                     "6.1.0-56-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1",
                                     "x86_64",         "(none)"};
            for (int i = 0; i < 6; ++i) {
                std::memcpy(u.data() + i * kUtsFieldSize, fields[i], std::strlen(fields[i]));
            }
            return done(uwrite(p, a[0], u) ? 0 : neg(EFAULT));
        }
        case kChdir: {
            auto path = ustring(p, a[0], 4096);
            if (!path) return done(neg(EFAULT));
            uint64_t err = 0;
            auto full = resolve(p, kAtFdcwd, *path, err);
            if (!full) return done(err);
            auto it = fs_.find(*full);
            if (it == fs_.end()) return done(neg(ENOENT));
            if (it->second->type != Node::Type::kDir) return done(neg(ENOTDIR));
            p.cwd = *full;
            return done(0);
        }
        case kUmask: {
            uint64_t old = p.umask;
            p.umask = static_cast<uint32_t>(a[0] & 0777);
            return done(old);
        }
        case kSetsid:
            if (p.pgid == p.pid) return done(neg(EPERM));
            p.sid = p.pgid = p.pid;
            return done(static_cast<uint64_t>(p.pid));
        case kMlock: {
            uint64_t s = page_down(a[0]), e = page_up(a[0] + a[1]);
            for (uint64_t x = s; x < e; x += kPageSize) {
                if (p.mm.find(x) == nullptr) return done(neg(ENOMEM));
            }
            for (uint64_t x = s; x < e; x += kPageSize) {
                auto& pg = p.mm.pages[x];
                if (!pg) pg = std::make_shared<Page>(Page{});
            }
            p.locked = true;
            return done(0);
        }
        case kPrctl:
            return done(sys_prctl(p, a));
        case kGetdents64:
            return done(sys_getdents64(p, a));
        case kClockGettime: {
            Timespec ts{static_cast<int64_t>(tick_ / 1000),
                        static_cast<int64_t>(tick_ % 1000) * 1000000};
            return done(uwrite(p, a[1], std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts))
                            ? 0
                            : neg(EFAULT));
        }
        case kOpenat:
            return done(sys_openat(p, a));
        case kNewfstatat:
            return done(sys_newfstatat(p, a));
        case kReadlinkat:
            return done(sys_readlinkat(p, a));
        case kCloseRange: {
            uint64_t first = a[0] & 0xffffffff, last = a[1] & 0xffffffff, flags = a[2];
            if ((flags & ~uint64_t{6}) != 0 || first > last) return done(neg(EINVAL));
            if (!(flags & 4)) {
                for (auto it = p.fds.begin(); it != p.fds.end();) {
                    uint64_t fd = static_cast<uint64_t>(it->first);
                    it = (fd >= first && fd <= last) ? p.fds.erase(it) : std::next(it);
                }
            }
            return done(0);
        }
        default:
            return done(neg(ENOSYS));
    }
}

uint64_t FakeGuest::sys_mmap(Process& p, const std::array<uint64_t, 6>& a) {
    uint64_t addr = a[0], len = a[1], prot = a[2], flags = a[3];
    if (len == 0) return neg(EINVAL);
    if (!(flags & kMapAnonymous)) return neg(ENODEV);  // no file mappings in this guest
    uint64_t type = flags & 3;
    if (type != kMapShared && type != kMapPrivate) return neg(EINVAL);
    len = page_up(len);
    if (len == 0 || len > kUserEnd) return neg(ENOMEM);
    if ((prot & kProtExec) && p.deny_exec) return neg(EACCES);
    bool fixed = flags & (kMapFixed | kMapFixedNoreplace);
    uint64_t at = 0;
    if (fixed) {
        if (addr & (kPageSize - 1)) return neg(EINVAL);
        if (addr + len > kUserEnd || addr + len < addr) return neg(ENOMEM);
        if (addr < kMmapMin) return neg(EPERM);
        if (p.mm.overlaps(addr, addr + len)) {
            if (flags & kMapFixedNoreplace) return neg(EEXIST);
            p.mm.unmap(addr, addr + len);
        }
        at = addr;
    } else {
        uint64_t hint = page_down(addr);
        if (hint >= kMmapMin && hint + len <= kUserEnd && hint + len > hint &&
            !p.mm.overlaps(hint, hint + len)) {
            at = hint;
        } else {
            uint64_t top = kMmapBase;
            while (top >= len + kMmapMin && p.mm.overlaps(top - len, top))
                top -= kPageSize;
            if (top < len + kMmapMin) return neg(ENOMEM);
            at = top - len;
        }
    }
    p.mm.add({at, at + len, type == kMapShared, prot}, (flags & kMapPopulate) != 0);
    return at;
}

uint64_t FakeGuest::sys_munmap(Process& p, uint64_t addr, uint64_t len) {
    if ((addr & (kPageSize - 1)) || len == 0) return neg(EINVAL);
    uint64_t end = page_up(addr + len);
    if (end > kUserEnd || end < addr) return neg(EINVAL);
    p.mm.unmap(addr, end);
    return 0;
}

uint64_t FakeGuest::sys_mprotect(Process& p, uint64_t addr, uint64_t len, uint64_t prot) {
    if ((addr & (kPageSize - 1)) || (prot & ~uint64_t{7})) return neg(EINVAL);
    uint64_t end = page_up(addr + len);
    if (end > kUserEnd || end < addr) return neg(ENOMEM);
    if (end == addr) return 0;
    if ((prot & kProtExec) && p.deny_exec) return neg(EACCES);
    return p.mm.protect(addr, end, prot) ? 0 : neg(ENOMEM);
}

uint64_t FakeGuest::sys_getsid(const Process& p, int64_t pid) const {
    if (pid == 0) return static_cast<uint64_t>(p.ns_pid != 0 ? 0 : p.sid);
    if (p.pid_ns == kInitPidNs) {
        if (pid == 2) return 0;  // kthreadd, in no session
        const Process* q = process_ptr(pid);
        return q ? static_cast<uint64_t>(q->sid) : neg(ESRCH);
    }
    // Another pid namespace sees its own processes alone, by their pids there; their
    // sessions began outside it.
    for (const auto& [global, q] : processes_) {
        if (q->pid_ns == p.pid_ns && visible_pid(*q) == pid) return 0;
    }
    return neg(ESRCH);
}

uint64_t FakeGuest::sys_clone(Thread& t, const std::array<uint64_t, 6>& a) {
    uint64_t flags = a[0];
    if (flags & ~uint64_t{0xff}) return neg(EINVAL);  // only fork-like clones are modelled
    Process& parent = proc_of(t);
    auto c = std::make_unique<Process>();
    c->pid = next_pid_++;
    c->ppid = parent.pid;
    c->pgid = parent.pgid;
    c->sid = parent.sid;
    c->uid = parent.uid;
    c->comm = parent.comm;
    c->mnt_ns = parent.mnt_ns;
    c->pid_ns = parent.pid_ns;
    c->user_ns = parent.user_ns;
    c->exe = parent.exe;
    c->seccomp = parent.seccomp;
    c->seccomp_allowed = parent.seccomp_allowed;
    c->deny_exec = parent.deny_exec;
    c->root = parent.root;
    c->cwd = parent.cwd;
    c->exit_signal = flags & 0xff;
    c->mm = parent.mm.fork_copy(0x10000000ULL + static_cast<uint64_t>(c->pid) * 0x100000ULL);
    c->fds = parent.fds;
    c->umask = parent.umask;
    c->sigmask = parent.sigmask;
    c->workload = parent.workload;
    c->spec = parent.spec;
    c->arg_start = parent.arg_start;
    c->arg_end = parent.arg_end;
    Process& child = *c;
    processes_[child.pid] = std::move(c);
    Thread& ct = create_thread(child, child.pid);
    ct.cpu = t.cpu;
    ct.in_prologue = t.in_prologue;
    ct.step = t.step;
    ct.compute_left = t.compute_left;
    ct.expecting = false;
    // ret_from_fork returns to user mode through the slow path with a copy of the
    // parent's pt_regs, rax = 0.
    kvm_regs u = t.cpu.regs;
    u.rax = 0;
    u.rip = u.rcx;
    u.rflags = u.r11;
    if (a[1] != 0) u.rsp = a[1];
    enter_slow_path(ct, u);
    make_runnable(ct);
    return static_cast<uint64_t>(child.pid);
}

std::optional<std::string> FakeGuest::resolve(const Process& p, int64_t dirfd,
                                              const std::string& path, uint64_t& err) const {
    if (path.empty()) {
        err = neg(ENOENT);
        return std::nullopt;
    }
    std::string full;
    if (path[0] == '/') {
        full = path;
    } else {
        std::string base;
        if (dirfd == kAtFdcwd) {
            base = p.cwd;
        } else {
            auto it = p.fds.find(static_cast<int>(dirfd));
            if (it == p.fds.end()) {
                err = neg(EBADF);
                return std::nullopt;
            }
            if (it->second.node->type != Node::Type::kDir) {
                err = neg(ENOTDIR);
                return std::nullopt;
            }
            base = it->second.path;
        }
        full = base + "/" + path;
    }
    std::vector<std::string> parts;
    std::stringstream ss(full);
    std::string part;
    while (std::getline(ss, part, '/')) {
        if (part.empty() || part == ".") continue;
        if (part == "..") {
            if (!parts.empty()) parts.pop_back();
            continue;
        }
        parts.push_back(part);
    }
    std::string out;
    for (const auto& x : parts)
        out += "/" + x;
    return out.empty() ? "/" : out;
}

uint64_t FakeGuest::sys_openat(Process& p, const std::array<uint64_t, 6>& a) {
    auto path = ustring(p, a[1], 4096);
    if (!path) return neg(EFAULT);
    uint64_t flags = a[2], err = 0;
    auto full = resolve(p, static_cast<int64_t>(a[0]), *path, err);
    if (!full) return err;
    auto it = fs_.find(*full);
    uint64_t acc = flags & kOAccmode;
    if (it == fs_.end() && acc == kORdonly) {
        // /proc/PID/comm, made when opened: a process's name as the kernel keeps it.
        int64_t pid = 0;
        char tail[8] = {};
        if (std::sscanf(full->c_str(), "/proc/%" SCNd64 "/%7s", &pid, tail) == 2 &&
            std::string(tail) == "comm") {
            Process* q = process_ptr(pid);
            if (q == nullptr || q->zombie) return neg(ENOENT);
            auto n = std::make_shared<Node>();
            n->content = q->comm.substr(0, 15) + "\n";
            n->mode = 0644;
            n->readonly = true;
            int fd = 0;
            while (p.fds.count(fd))
                ++fd;
            p.fds[fd] = OpenFile{*full, n, 0, flags};
            return static_cast<uint64_t>(fd);
        }
    }
    if (it == fs_.end()) {
        if (!(flags & kOCreat)) return neg(ENOENT);
        auto slash = full->rfind('/');
        std::string parent = slash == 0 ? "/" : full->substr(0, slash);
        auto pit = fs_.find(parent);
        if (pit == fs_.end()) return neg(ENOENT);
        if (pit->second->type != Node::Type::kDir) return neg(ENOTDIR);
        if (pit->second->readonly) return neg(EACCES);
        auto n = std::make_shared<Node>();
        n->type = Node::Type::kFile;
        n->mode = static_cast<uint32_t>(a[3] & 07777) & ~p.umask;
        n->uid = p.uid;
        n->ino = 1000 + fs_.size();
        it = fs_.emplace(*full, n).first;
    } else if ((flags & kOCreat) && (flags & kOExcl)) {
        return neg(EEXIST);
    }
    Node& n = *it->second;
    if ((flags & kODirectory) && n.type != Node::Type::kDir) return neg(ENOTDIR);
    if (n.type == Node::Type::kDir && acc != kORdonly) return neg(EISDIR);
    if (p.uid != 0) {
        uint32_t bits = n.uid == p.uid ? (n.mode >> 6) & 7 : n.mode & 7;
        uint32_t need = acc == kORdonly ? 4 : acc == kOWronly ? 2 : 6;
        if (need & ~bits) return neg(EACCES);
    }
    if (acc != kORdonly && n.readonly) return neg(EACCES);
    if ((flags & kOTrunc) && acc != kORdonly && n.type == Node::Type::kFile) n.content.clear();
    int fd = 0;
    while (p.fds.count(fd))
        ++fd;
    p.fds[fd] = OpenFile{*full, it->second, 0, flags};
    return static_cast<uint64_t>(fd);
}

uint64_t FakeGuest::sys_read(Thread& t, const std::array<uint64_t, 6>& a, bool positional,
                             bool& must_block) {
    Process& p = proc_of(t);
    auto it = p.fds.find(static_cast<int>(a[0]));
    if (it == p.fds.end() || (it->second.flags & kOAccmode) == kOWronly) return neg(EBADF);
    Node& n = *it->second.node;
    if (n.type == Node::Type::kDir) return neg(EISDIR);
    if (n.type == Node::Type::kBlocking) {
        must_block = true;
        return 0;
    }
    if (n.type == Node::Type::kNull) return 0;
    uint64_t off = positional ? a[3] : it->second.pos;
    if (positional && static_cast<int64_t>(off) < 0) return neg(EINVAL);
    std::string chunk = off < n.content.size() ? n.content.substr(off, a[2]) : std::string();
    if (!chunk.empty() &&
        !uwrite(p, a[1], std::span(reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size()))) {
        return neg(EFAULT);
    }
    if (!positional) it->second.pos += chunk.size();
    return chunk.size();
}

uint64_t FakeGuest::sys_getdents64(Process& p, const std::array<uint64_t, 6>& a) {
    auto it = p.fds.find(static_cast<int>(a[0]));
    if (it == p.fds.end()) return neg(EBADF);
    OpenFile& f = it->second;
    if (f.node->type != Node::Type::kDir) return neg(ENOTDIR);
    std::vector<std::pair<std::string, std::shared_ptr<Node>>> entries = {{".", f.node},
                                                                          {"..", f.node}};
    std::string prefix = f.path == "/" ? "/" : f.path + "/";
    for (const auto& [path, node] : fs_) {
        if (path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0 &&
            path.find('/', prefix.size()) == std::string::npos) {
            entries.emplace_back(path.substr(prefix.size()), node);
        }
    }
    std::vector<uint8_t> out;
    uint64_t i = f.pos;
    for (; i < entries.size(); ++i) {
        const auto& [name, node] = entries[i];
        size_t reclen = (kDirent64NameOffset + name.size() + 1 + 7) & ~size_t{7};
        if (out.size() + reclen > a[2]) {
            if (out.empty()) return neg(EINVAL);
            break;
        }
        size_t at = out.size();
        out.resize(at + reclen, 0);
        Dirent64Header h{node->ino, static_cast<int64_t>(i + 1), static_cast<uint16_t>(reclen),
                         static_cast<uint8_t>(node->type == Node::Type::kDir ? 4 : 8)};
        std::memcpy(out.data() + at, &h.d_ino, 8);
        std::memcpy(out.data() + at + 8, &h.d_off, 8);
        std::memcpy(out.data() + at + 16, &h.d_reclen, 2);
        out[at + 18] = h.d_type;
        std::memcpy(out.data() + at + kDirent64NameOffset, name.data(), name.size());
    }
    if (!out.empty() && !uwrite(p, a[1], out)) return neg(EFAULT);
    f.pos = i;
    return out.size();
}

uint64_t FakeGuest::sys_newfstatat(Process& p, const std::array<uint64_t, 6>& a) {
    auto path = ustring(p, a[1], 4096);
    if (!path) return neg(EFAULT);
    std::shared_ptr<Node> node;
    if (path->empty()) {
        if (!(a[3] & kAtEmptyPath)) return neg(ENOENT);
        if (static_cast<int64_t>(a[0]) == kAtFdcwd) {
            node = fs_[p.cwd];
        } else {
            auto it = p.fds.find(static_cast<int>(a[0]));
            if (it == p.fds.end()) return neg(EBADF);
            node = it->second.node;
        }
    } else {
        uint64_t err = 0;
        auto full = resolve(p, static_cast<int64_t>(a[0]), *path, err);
        if (!full) return err;
        // Root directories: "/" is the process's own root, /proc/2/root kthreadd's (the
        // real one), unless the process cannot see pid 2 (another pid namespace).
        if (*full == "/") full = p.root;
        if (*full == "/proc/2/root") {
            if (p.pid_ns != kInitPidNs) return neg(ENOENT);
            full = "/";
        }
        auto it = fs_.find(*full);
        if (it == fs_.end()) return neg(ENOENT);
        node = it->second;
    }
    Stat st{};
    st.st_dev = 0x803;
    st.st_ino = node->ino;
    bool dir = node->type == Node::Type::kDir;
    st.st_nlink = dir ? 2 : 1;
    st.st_mode = (dir                               ? 0040000u
                  : node->type == Node::Type::kNull ? 0020000u
                                                    : 0100000u) |
                 node->mode;
    st.st_uid = node->uid;
    st.st_size = node->readonly ? 0 : static_cast<int64_t>(node->content.size());
    st.st_blksize = 4096;
    st.st_blocks = (st.st_size + 511) / 512;
    return uwrite(p, a[2], std::span(reinterpret_cast<const uint8_t*>(&st), sizeof st))
               ? 0
               : neg(EFAULT);
}

uint64_t FakeGuest::sys_readlinkat(Process& p, const std::array<uint64_t, 6>& a) {
    auto path = ustring(p, a[1], 4096);
    if (!path) return neg(EFAULT);
    if (static_cast<int64_t>(a[3]) <= 0) return neg(EINVAL);
    uint64_t err = 0;
    auto full = resolve(p, static_cast<int64_t>(a[0]), *path, err);
    if (!full) return err;
    std::optional<std::string> target;
    if (full->compare(0, 6, "/proc/") == 0) {
        std::string rest = full->substr(6);
        auto slash = rest.find('/');
        std::string who = rest.substr(0, slash);
        std::string what = slash == std::string::npos ? "" : rest.substr(slash + 1);
        bool numeric = !who.empty() && who.find_first_not_of("0123456789") == std::string::npos;
        // A link's target as d_path() prints it: relative to the reader's root when reachable
        // from it, else from the real root (no "(unreachable)" marker, unlike getcwd).
        auto seen_from_reader = [&](const std::string& path) -> std::string {
            if (p.root == "/") return path;
            if (path == p.root) return "/";
            if (path.compare(0, p.root.size() + 1, p.root + "/") == 0)
                return path.substr(p.root.size());
            return path;
        };
        Process* q = nullptr;
        if (who == "self" || who == "thread-self") {
            q = &p;
        } else if (numeric && std::stoll(who) == 2) {
            // kthreadd, in the initial namespaces; no pid 2 in another pid namespace.
            if (p.pid_ns != kInitPidNs) return neg(ENOENT);
            if (p.uid != 0) return neg(EACCES);
            if (what == "ns/mnt") {
                target = kInitMntNs;
            } else if (what == "ns/pid") {
                target = kInitPidNs;
            } else if (what == "ns/user") {
                target = kInitUserNs;
            } else if (what == "root") {
                target = seen_from_reader("/");
            } else {
                return what.empty() ? neg(EINVAL) : neg(ENOENT);  // exe: a kernel thread has none
            }
        } else if (numeric) {
            q = process_ptr(std::stoll(who));
            if (q == nullptr || q->zombie) return neg(ENOENT);
            if (p.pid_ns != kInitPidNs && q->pid_ns != p.pid_ns) return neg(ENOENT);
        }
        if (q != nullptr) {
            if (q != &p && p.uid != 0 && q->uid != p.uid) return neg(EACCES);
            if (what == "ns/mnt")
                target = q->mnt_ns;
            else if (what == "ns/pid")
                target = q->pid_ns;
            else if (what == "ns/user")
                target = q->user_ns;
            else if (what == "exe")
                target = q->exe;
            else if (what == "root")
                target = seen_from_reader(q->root);
            else if (what == "cwd")
                target = q->cwd;
            else if (what.empty())
                return neg(EINVAL);
            else
                return neg(ENOENT);
        }
    }
    if (!target) return fs_.count(*full) ? neg(EINVAL) : neg(ENOENT);
    size_t n = std::min<size_t>(target->size(), a[3]);
    if (!uwrite(p, a[2], std::span(reinterpret_cast<const uint8_t*>(target->data()), n))) {
        return neg(EFAULT);
    }
    return n;
}

uint64_t FakeGuest::sys_prctl(Process& p, const std::array<uint64_t, 6>& a) {
    switch (a[0]) {
        case kPrSetName: {
            std::string name;
            for (size_t i = 0; i < 15; ++i) {
                uint8_t c = 0;
                if (!uread(p, a[1] + i, std::span(&c, 1))) return neg(EFAULT);
                if (c == 0) break;
                name.push_back(static_cast<char>(c));
            }
            p.comm = name;
            return 0;
        }
        case kPrGetSeccomp:
            return p.seccomp;
        case 16: {  // PR_GET_NAME
            std::vector<uint8_t> buf(16, 0);
            std::memcpy(buf.data(), p.comm.data(), std::min<size_t>(p.comm.size(), 15));
            return uwrite(p, a[1], buf) ? 0 : neg(EFAULT);
        }
        case kPrSetMm: {
            if (a[3] != 0 || a[4] != 0) return neg(EINVAL);
            if (p.uid != 0) return neg(EPERM);
            uint64_t addr = a[2];
            if (addr >= kUserEnd || addr < kMmapMin || p.mm.find(addr) == nullptr)
                return neg(EINVAL);
            if (a[1] == kPrSetMmArgStart) {
                if (addr > p.arg_end) return neg(EINVAL);
                p.arg_start = addr;
                return 0;
            }
            if (a[1] == kPrSetMmArgEnd) {
                if (addr < p.arg_start) return neg(EINVAL);
                p.arg_end = addr;
                return 0;
            }
            return neg(EINVAL);
        }
        default:
            return neg(EINVAL);
    }
}

uint64_t FakeGuest::sys_kill(Process& p, int64_t pid, int sig) {
    if (sig < 0 || sig > 64) return neg(EINVAL);
    if (pid <= 0) return neg(EPERM);  // groups and -1 are not modelled
    Process* q = process_ptr(pid);
    if (q == nullptr || q->zombie) return neg(ESRCH);
    if (p.uid != 0 && q->uid != p.uid) return neg(EPERM);
    if (sig == 0) return 0;
    exit_process(*q, sig);
    return 0;
}

// ---------------------------------------------------------------------------------------
// GuestAccess

std::string FakeGuest::describe() const {
    return "fake:" + std::to_string(vcpus_.size()) + "vcpu";
}

ErrorOr<void> FakeGuest::usable() const {
    if (detached_) return make_error(ENOTCONN, "fake guest: detached");
    return {};
}

ErrorOr<void> FakeGuest::stopped() const {
    TRY(usable());
    if (running_) return make_error(EBUSY, "internal: packet sent while the fake VM runs");
    return {};
}

ErrorOr<FakeGuest::Vcpu*> FakeGuest::cpu(VcpuId vcpu) {
    if (vcpu < 1 || static_cast<size_t>(vcpu) > vcpus_.size()) {
        return make_error(EINVAL, "fake guest: no vCPU " + std::to_string(vcpu));
    }
    return &vcpus_[static_cast<size_t>(vcpu - 1)];
}

VcpuState& FakeGuest::state_of(Vcpu& c) {
    if (c.tid == 0) return c.idle;
    return threads_.at(c.tid)->cpu;
}

void FakeGuest::host_moved(Vcpu& c, uint64_t rip) {
    if (c.tid == 0) return;
    Thread& t = *threads_.at(c.tid);
    if (t.cpu.regs.rip == rip) return;
    // Whatever the thread was about to do is no longer its own program's doing.
    t.own_syscall_at = 0;
    t.from_user = false;
    t.natural_entry = false;
}

void FakeGuest::run_before_resume() {
    if (auto note = std::exchange(before_resume_, nullptr)) note();
}

ErrorOr<void> FakeGuest::resume() {
    TRY(stopped());
    run_before_resume();
    running_ = true;
    ++stats_.resumes;
    return {};
}

ErrorOr<StopEvent> FakeGuest::wait_for_stop(Deadline deadline) {
    TRY(usable());
    if (!running_) return make_error(EINVAL, "internal: waiting for a stop while stopped");
    return run_until(tick_limit(deadline));
}

ErrorOr<StopEvent> FakeGuest::interrupt(Deadline) {
    TRY(usable());
    if (!running_) return make_error(EINVAL, "internal: interrupting a stopped VM");
    if (pending_stop_) return take_stop();
    running_ = false;
    host_us_ += kStopCostUs;
    ++stats_.stops;
    ++stats_.interrupts;
    return StopEvent{1, StopEvent::Reason::kInterrupted};
}

ErrorOr<StopEvent> FakeGuest::step(VcpuId vcpu, Deadline) {
    TRY(stopped());
    Vcpu* c = TRY(cpu(vcpu));
    ++stats_.steps;
    host_us_ += kStepCostUs;
    if (c->tid != 0) {
        Thread& t = *threads_.at(c->tid);
        if (options_.step_overrides_breakpoints || !armed(t.cpu.regs.rip)) {
            execute(t);
            if (t.sched == SchedState::kOnCpu && t.cpu.user_mode()) ++t.slice;
        }
    }
    return StopEvent{vcpu, StopEvent::Reason::kBreakpoint};
}

ErrorOr<std::vector<VcpuId>> FakeGuest::vcpus() {
    TRY(stopped());
    std::vector<VcpuId> out;
    for (size_t i = 0; i < vcpus_.size(); ++i)
        out.push_back(static_cast<VcpuId>(i + 1));
    return out;
}

namespace {
constexpr char kRawMagic[8] = {'F', 'A', 'K', 'E', 'V', 'C', 'P', 'U'};
constexpr size_t kRawSize = 8 + sizeof(kvm_regs) + sizeof(kvm_sregs) + 8;
}  // namespace

ErrorOr<RegisterSnapshot> FakeGuest::snapshot(VcpuId vcpu) {
    TRY(stopped());
    Vcpu* c = TRY(cpu(vcpu));
    RegisterSnapshot s;
    s.vcpu = vcpu;
    s.state = state_of(*c);
    s.raw.resize(kRawSize);
    std::memcpy(s.raw.data(), kRawMagic, 8);
    std::memcpy(s.raw.data() + 8, &s.state.regs, sizeof(kvm_regs));
    std::memcpy(s.raw.data() + 8 + sizeof(kvm_regs), &s.state.sregs, sizeof(kvm_sregs));
    std::memcpy(s.raw.data() + 8 + sizeof(kvm_regs) + sizeof(kvm_sregs), &s.state.kernel_gs_base,
                8);
    return s;
}

ErrorOr<void> FakeGuest::restore(const RegisterSnapshot& snapshot) {
    TRY(stopped());
    Vcpu* c = TRY(cpu(snapshot.vcpu));
    if (snapshot.raw.size() != kRawSize || std::memcmp(snapshot.raw.data(), kRawMagic, 8) != 0) {
        return make_error(EINVAL, "register snapshot does not match this stub's layout");
    }
    VcpuState s;
    std::memcpy(&s.regs, snapshot.raw.data() + 8, sizeof(kvm_regs));
    std::memcpy(&s.sregs, snapshot.raw.data() + 8 + sizeof(kvm_regs), sizeof(kvm_sregs));
    std::memcpy(&s.kernel_gs_base, snapshot.raw.data() + 8 + sizeof(kvm_regs) + sizeof(kvm_sregs),
                8);
    VcpuState& cur = state_of(*c);
    host_moved(*c, s.regs.rip);
    if ((s.sregs.cr3 & 0x000fffffffffe000ULL) != (cur.sregs.cr3 & 0x000fffffffffe000ULL)) {
        anomaly("restore() of a snapshot from another address space onto vCPU " +
                std::to_string(snapshot.vcpu));
        s.sregs.cr3 = cur.sregs.cr3;
    }
    cur = s;
    ++stats_.register_writes;
    return {};
}

ErrorOr<void> FakeGuest::write_regs(VcpuId vcpu, const kvm_regs& regs) {
    TRY(stopped());
    Vcpu* c = TRY(cpu(vcpu));
    host_moved(*c, regs.rip);
    state_of(*c).regs = regs;
    ++stats_.register_writes;
    return {};
}

ErrorOr<void> FakeGuest::read_virtual(VcpuId vcpu, uint64_t va, std::span<uint8_t> out) {
    TRY(stopped());
    Vcpu* c = TRY(cpu(vcpu));
    if (out.empty()) return {};
    bool ok = false;
    if (va >= kKernelStart) {
        ok = kread(va, out);
    } else if (c->tid != 0) {
        ok = proc_of(*threads_.at(c->tid)).mm.dbg_read(va, out);
    }
    if (!ok) return make_error(EFAULT, "gdbstub refused memory read (E14)");
    return {};
}

ErrorOr<void> FakeGuest::write_virtual(VcpuId vcpu, uint64_t va, std::span<const uint8_t> data) {
    TRY(stopped());
    Vcpu* c = TRY(cpu(vcpu));
    if (data.empty()) return {};
    bool ok = false;
    if (va >= kKernelStart) {
        ok = kwrite(va, data);
    } else if (c->tid != 0) {
        ok = proc_of(*threads_.at(c->tid)).mm.dbg_write(va, data);
    }
    if (!ok) return make_error(EFAULT, "gdbstub refused memory write (E14)");
    return {};
}

ErrorOr<void> FakeGuest::read_physical(uint64_t pa, std::span<uint8_t> out) {
    TRY(stopped());
    // Only the top-level page tables exist: an entry is present where the process maps
    // something in its 512 GiB, none once it has exited (exit_mmap clears them).
    // A process's tables sit at its cr3_base (kernel half, user half at +0x1000); the
    // slot of a reaped process reads as zeros, as a freed page not yet reused would.
    bool in_table_slot = pa >= kCr3Area && (pa - kCr3Area) % kCr3Stride < 0x2000;
    if (!in_table_slot || (pa & 7) != 0 || out.size() != 8)
        return make_error(EFAULT, "fake guest: no physical memory there (E14)");
    uint64_t entry = 0;
    uint64_t first = ((pa & 0xfff) / 8) << 39;
    for (const auto& [pid, p] : processes_) {
        bool same = (p->mm.cr3_base & ~uint64_t{0x1fff}) == (pa & ~uint64_t{0x1fff});
        if (same && p->mm.overlaps(first, first + (uint64_t{1} << 39)))
            entry = (p->mm.cr3_base + 0x2000) | 0x67;
    }
    std::memcpy(out.data(), &entry, 8);
    return {};
}

ErrorOr<void> FakeGuest::write_physical(uint64_t, std::span<const uint8_t>) {
    TRY(stopped());
    return make_error(EFAULT, "fake guest: no physical memory model (E14)");
}

ErrorOr<void> FakeGuest::insert_breakpoint(uint64_t va) {
    TRY(stopped());
    ++breakpoints_[va];
    ++stats_.breakpoint_inserts;
    return {};
}

ErrorOr<void> FakeGuest::remove_breakpoint(uint64_t va) {
    TRY(stopped());
    auto it = breakpoints_.find(va);
    if (it == breakpoints_.end() || it->second == 0) {
        return make_error(EINVAL, "gdbstub refused breakpoint remove (E22)");
    }
    if (--it->second == 0) breakpoints_.erase(it);
    ++stats_.breakpoint_removes;
    return {};
}

ErrorOr<void> FakeGuest::detach() {
    TRY(usable());
    // As GdbClient::detach does: a running VM is interrupted first.
    if (running_) TRY(interrupt(Deadline::after_ms(1000)));
    breakpoints_.clear();
    run_before_resume();
    running_ = true;
    detached_ = true;
    return {};
}

// ---------------------------------------------------------------------------------------
// Inspection and control

std::vector<uint64_t> FakeGuest::armed_breakpoints() const {
    std::vector<uint64_t> out;
    for (const auto& [a, n] : breakpoints_) {
        if (n > 0) out.push_back(a);
    }
    return out;
}

std::vector<ProcessInfo> FakeGuest::processes() const {
    std::vector<ProcessInfo> out;
    for (const auto& [pid, p] : processes_) {
        if (auto i = process(pid)) out.push_back(*i);
    }
    return out;
}

std::optional<ProcessInfo> FakeGuest::process(int64_t pid) const {
    const Process* p = process_ptr(pid);
    if (p == nullptr) return std::nullopt;
    ProcessInfo i;
    i.pid = p->pid;
    i.ppid = p->ppid;
    i.sid = p->sid;
    i.pgid = p->pgid;
    i.comm = p->comm;
    i.uid = p->uid;
    i.zombie = p->zombie;
    i.exit_status = p->exit_status;
    i.exit_signal = p->exit_signal;
    i.mnt_ns = p->mnt_ns;
    i.pid_ns = p->pid_ns;
    i.user_ns = p->user_ns;
    i.seccomp = p->seccomp;
    i.root = p->root;
    i.cwd = p->cwd;
    i.umask = p->umask;
    i.sigmask = p->sigmask;
    for (const auto& [fd, f] : p->fds)
        i.fds.push_back(fd);
    i.tids = p->tids;
    i.cr3 = p->mm.cr3_base;
    i.arg_start = p->arg_start;
    i.arg_end = p->arg_end;
    i.locked = p->locked;
    return i;
}

std::optional<ThreadInfo> FakeGuest::thread(int64_t tid) const {
    const Thread* t = thread_ptr(tid);
    if (t == nullptr) return std::nullopt;
    ThreadInfo i = t->ctr;
    i.sched = t->sched;
    i.vcpu = t->vcpu;
    i.cpu = t->cpu;
    return i;
}

std::optional<int64_t> FakeGuest::thread_on_vcpu(VcpuId vcpu) const {
    if (vcpu < 1 || static_cast<size_t>(vcpu) > vcpus_.size()) return std::nullopt;
    int64_t tid = vcpus_[static_cast<size_t>(vcpu - 1)].tid;
    if (tid == 0) return std::nullopt;
    return tid;
}

bool FakeGuest::has_mapping_in(int64_t pid, uint64_t start, uint64_t end) const {
    const Process* p = process_ptr(pid);
    return p != nullptr && p->mm.overlaps(start, end);
}

std::optional<std::vector<uint8_t>> FakeGuest::read_process(int64_t pid, uint64_t va,
                                                            size_t len) const {
    const Process* p = process_ptr(pid);
    if (p == nullptr) return std::nullopt;
    std::vector<uint8_t> out(len);
    if (!p->mm.dbg_read(va, out)) return std::nullopt;
    return out;
}

std::vector<int64_t> FakeGuest::shadow_like_processes() const {
    const auto& m = payload();
    std::vector<int64_t> out;
    for (const auto& [pid, p] : processes_) {
        if (p->zombie) continue;
        for (const auto& [a, pg] : p->mm.pages) {
            if (std::memcmp(pg->data(), m.bytes.data(), m.bytes.size()) == 0) {
                out.push_back(pid);
                break;
            }
        }
    }
    return out;
}

void FakeGuest::signal_on_next_return(int64_t tid, int signo, bool injected_only) {
    if (Thread* t = thread_ptr(tid)) {
        t->pending_signal = signo;
        t->signal_injected_only = injected_only;
    }
}

void FakeGuest::restart_next_syscall(int64_t tid, bool injected_only) {
    if (Thread* t = thread_ptr(tid)) {
        t->restart_next = true;
        t->forced_injected_only = injected_only;
    }
}

void FakeGuest::slow_return_next_syscall(int64_t tid, bool injected_only) {
    if (Thread* t = thread_ptr(tid)) {
        t->slow_next = true;
        t->forced_injected_only = injected_only;
    }
}

bool FakeGuest::kill_process(int64_t pid, int sig) {
    Process* p = process_ptr(pid);
    if (p == nullptr || p->zombie) return false;
    exit_process(*p, sig);
    return true;
}

void FakeGuest::set_syscalls_blocked(int64_t pid, bool blocked) {
    if (Process* p = process_ptr(pid)) p->syscalls_blocked = blocked;
}

void FakeGuest::release_blocking_reads() {
    ++blocking_generation_;
}

}  // namespace cloudvmi::fake
