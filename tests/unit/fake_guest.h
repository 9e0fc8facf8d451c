// An in-memory GuestAccess that behaves like QEMU's gdbstub attached to a small x86-64
// Linux guest, for fast and deterministic unit tests of the injection engine, the shadow
// process and recovery.
//
// It is a behavioural model, not an emulator. Time advances in ticks (one simulated
// millisecond each) only inside wait_for_stop()/advance(); a deadline is turned into a
// tick budget, so nothing sleeps. What it models, as the code under test relies on it:
//
//  - Kernel text and IDT from the recorded fixture tests/data/kernel-6.1.0-56-pti, so that
//    discover_kernel_entry_points() works on it; the fixture's syscall entry, sysretq,
//    swapgs_restore_regs_and_return_to_usermode and iretq are the places where threads
//    enter and leave the kernel.
//  - A thread's behaviour is a function of its registers (and memory) wherever the host
//    can see it, exactly like a CPU: rip == syscall entry executes the syscall in rax with
//    rdi, rsi, rdx, r10, r8, r9 in the thread's process and returns to sysretq with rcx,
//    r11, rsp and every other register preserved; sysretq goes to user mode at rcx; the
//    slow path pops a struct pt_regs from the kernel stack, iretq pops an iret frame.
//  - User code: workload processes run a scripted program from a code page holding real
//    `syscall` instructions (0f 05), check on every return that the kernel (and the host)
//    preserved their registers and returned the right value, and run a signal handler that
//    returns through rt_sigreturn. A `syscall` instruction executes wherever the thread
//    stands on one in executable memory. The shadow payload (redirector/shadow/shadow_payload.S)
//    is recognised by its bytes on an executable page and interpreted label by label, with
//    the same register usage and memory accesses as the real code, in whichever process
//    runs it (the shadow, its helper, or the borrowed process running a batch).
//  - Processes with pid, uid, mount, pid and user namespaces, executable path, seccomp
//    mode (a filter that kills the process, SIGSYS, on any syscall its program does not
//    make besides getpid, getppid, gettid, getuid, prctl and rt_sigreturn, as systemd's
//    @system-service and container runtimes' default filters do), address space (4 KiB pages,
//    private and MAP_SHARED mappings with their protections, copied/shared on fork, mprotect,
//    partial munmap), one or more threads, file descriptors over a tiny fake file system, zombies,
//    reparenting to init (which reaps), blocking syscalls (nanosleep, wait4, a read of
//    /run/blocking), preemption and migration between vCPUs. /proc/2 is kthreadd: the initial
//    namespaces, seen from the initial pid namespace only.
//  - Physical memory: only the top-level page tables, enough to tell whether an address
//    space still exists (an entry is present where the process maps something; an exited
//    process's entries are cleared). Everything else is out of reach (E14).
//  - gdbstub semantics: all vCPUs stop together; a vCPU resumed on an armed breakpoint
//    stops again without executing; a single step executes one instruction even there
//    (TCG: "singlestep overrides breakpoints", accel/tcg/cpu-exec.c; FakeOptions can make
//    it stop instead, as a hardware breakpoint without RF would); breakpoints are counted
//    like TCG's
//    (inserting twice needs two removals); removing an unset one fails (E22); packets sent
//    while the guest runs are refused (EBUSY), waiting while stopped is EINVAL.
//
// Anything that a real kernel would turn into a crash, or that a workload notices as a
// corrupted register, is recorded in anomalies(): tests expect it to stay empty.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "redirector/guest/guest_access.h"
#include "redirector/inject/kernel_discovery.h"

namespace cloudvmi::fake {

inline constexpr const char* kInitMntNs = "mnt:[4026531840]";
inline constexpr const char* kInitPidNs = "pid:[4026531836]";
inline constexpr const char* kInitUserNs = "user:[4026531837]";
inline constexpr const char* kContainerMntNs = "mnt:[4026532210]";
inline constexpr const char* kContainerPidNs = "pid:[4026532213]";
inline constexpr const char* kContainerUserNs = "user:[4026532208]";
inline constexpr const char* kMeminfo =
    "MemTotal:         2014556 kB\n"
    "MemFree:          1788244 kB\n"
    "MemAvailable:     1803096 kB\n"
    "Buffers:             2380 kB\n"
    "Cached:             75248 kB\n";
inline constexpr const char* kKnownContent = "cloudvmi known file\n";

// Pids of the default processes.
inline constexpr int64_t kInitPid = 1;
inline constexpr int64_t kSleeperPid = 100;
inline constexpr int64_t kWorkerPid = 200;     // uid 1000
inline constexpr int64_t kContainerPid = 300;  // root, other mount namespace
inline constexpr int64_t kBandPid = 400;       // root, code inside the shadow band

// One step of a workload program: optionally some user-mode ticks, then one syscall.
struct Step {
    uint64_t nr = 0;
    std::array<uint64_t, 6> args{};
    int sleep_ms = -1;      // >= 0: nanosleep(ms) (nr/args ignored)
    int compute_ticks = 0;  // user-mode ticks before the syscall

    static Step sleep(int ms, int compute = 0) {
        Step s;
        s.sleep_ms = ms;
        s.compute_ticks = compute;
        return s;
    }
    static Step call(uint64_t nr, std::array<uint64_t, 6> args = {}, int compute = 0) {
        Step s;
        s.nr = nr;
        s.args = args;
        s.compute_ticks = compute;
        return s;
    }
};

struct ProcessSpec {
    int64_t pid = 0;
    int64_t ns_pid = 0;  // its pid in its own pid namespace (0: `pid`); 1 for a container's init
    std::string comm;
    uint32_t uid = 0;
    std::string mnt_ns = kInitMntNs;
    std::string pid_ns = kInitPidNs;  // another one: /proc shows only its own processes
    std::string user_ns = kInitUserNs;
    std::string root = "/";
    std::string exe;                // /proc/PID/exe; empty: /usr/sbin/<comm>
    uint64_t seccomp = 0;           // PR_GET_SECCOMP; not 0: a filter (see above)
    bool deny_exec = false;         // PROT_EXEC refused with EACCES (SELinux execmem, MDWE)
    int threads = 1;                // all run the program, each on its own stack
    uint64_t code_base = 0x400000;  // code page; the data page follows it
    std::vector<Step> prologue;     // run once
    std::vector<Step> loop;         // then repeated forever
};

struct FakeOptions {
    int vcpus = 1;
    bool sleeper = true;       // root, nanosleep(1 ms) forever
    int sleeper_delay_ms = 0;  // a first, longer sleep before that
    bool worker = true;        // uid 1000, getuid/getpid all the time
    bool container = false;    // root in another mount namespace, nanosleep(container_sleep_ms)
    int container_sleep_ms = 2;
    bool band_process = false;  // root, its code in the shadow band, getpid + nanosleep(1)
    bool busy_init = false;     // init calls getpid all the time (and reaps nothing)
    std::vector<ProcessSpec> extra;
    int warmup_ticks = 25;                   // ticks run by the constructor before "attaching"
    int time_slice = 3;                      // user-mode ticks before a thread is preempted
    bool step_overrides_breakpoints = true;  // TCG; false: a step on one stops at once
};

enum class SchedState { kRunnable, kOnCpu, kBlocked, kDead };

struct ProcessInfo {
    int64_t pid = 0;
    int64_t ppid = 0;
    int64_t sid = 0;
    int64_t pgid = 0;
    std::string comm;
    uint32_t uid = 0;
    bool zombie = false;
    int exit_status = 0;  // wait status once a zombie
    uint64_t exit_signal = 17;
    std::string mnt_ns;
    std::string pid_ns;
    std::string user_ns;
    std::string root;
    std::string cwd;
    uint64_t seccomp = 0;
    uint32_t umask = 022;
    uint64_t sigmask = 0;
    std::vector<int> fds;
    std::vector<int64_t> tids;
    uint64_t cr3 = 0;  // address-space base
    uint64_t arg_start = 0, arg_end = 0;
    bool locked = false;
};

struct ThreadInfo {
    int64_t tid = 0;
    int64_t pid = 0;
    SchedState sched = SchedState::kRunnable;
    int vcpu = 0;  // when on a CPU
    VcpuState cpu;
    // Made by its own program (its signal restorer included), with its own registers.
    uint64_t natural_syscalls = 0;
    // Every other one: entered with rip set to the syscall entry by the host, made from a
    // `syscall` instruction the host pointed it at, or by the shadow payload.
    uint64_t injected_syscalls = 0;
    std::map<uint64_t, uint64_t> injected_by_nr;  // syscall number -> how many injected
    uint64_t checked_returns = 0;                 // workload returns that passed the register check
    uint64_t handler_runs = 0;
    uint64_t sigreturns = 0;
    uint64_t signals_delivered = 0;
    uint64_t restarts = 0;
    uint64_t slow_returns = 0;                    // syscall returns forced through the slow path
    std::optional<kvm_regs> last_natural_sysret;  // registers at sysret after its own syscall
    std::optional<kvm_regs> last_sigreturn;       // user registers rt_sigreturn restored
};

struct FakeStats {
    uint64_t resumes = 0;
    uint64_t stops = 0;
    uint64_t breakpoint_stops = 0;
    uint64_t interrupts = 0;
    uint64_t steps = 0;
    uint64_t breakpoint_inserts = 0;
    uint64_t breakpoint_removes = 0;
    uint64_t register_writes = 0;
};

// Addresses from tests/data/kernel-6.1.0-56-pti/meta.txt.
KernelEntryPoints fixture_entry_points();

class FakeGuest : public GuestAccess {
  public:
    explicit FakeGuest(FakeOptions options = {});
    ~FakeGuest() override;
    FakeGuest(const FakeGuest&) = delete;
    FakeGuest& operator=(const FakeGuest&) = delete;

    // --- GuestAccess ---
    std::string describe() const override;
    bool running() const override { return running_; }
    ErrorOr<void> resume() override;
    void before_next_resume(std::function<void()> note) override {
        before_resume_ = std::move(note);
    }
    ErrorOr<StopEvent> wait_for_stop(Deadline deadline) override;
    ErrorOr<StopEvent> interrupt(Deadline deadline) override;
    ErrorOr<StopEvent> step(VcpuId vcpu, Deadline deadline) override;
    ErrorOr<std::vector<VcpuId>> vcpus() override;
    ErrorOr<RegisterSnapshot> snapshot(VcpuId vcpu) override;
    ErrorOr<void> restore(const RegisterSnapshot& snapshot) override;
    ErrorOr<void> write_regs(VcpuId vcpu, const kvm_regs& regs) override;
    ErrorOr<void> read_virtual(VcpuId vcpu, uint64_t va, std::span<uint8_t> out) override;
    ErrorOr<void> write_virtual(VcpuId vcpu, uint64_t va, std::span<const uint8_t> data) override;
    ErrorOr<void> read_physical(uint64_t pa, std::span<uint8_t> out) override;
    ErrorOr<void> write_physical(uint64_t pa, std::span<const uint8_t> data) override;
    ErrorOr<void> insert_breakpoint(uint64_t va) override;
    ErrorOr<void> remove_breakpoint(uint64_t va) override;
    ErrorOr<void> detach() override;
    RunControlCounters counters() const override {
        return {stats_.stops, stats_.breakpoint_inserts + stats_.breakpoint_removes};
    }

    // --- inspection ---
    uint64_t now() const { return tick_; }  // guest time, ms
    const FakeStats& stats() const { return stats_; }
    const std::vector<std::string>& anomalies() const { return anomalies_; }
    std::string anomalies_text() const;
    std::vector<uint64_t> armed_breakpoints() const;  // each address once
    std::vector<ProcessInfo> processes() const;       // live and zombie, by pid
    std::optional<ProcessInfo> process(int64_t pid) const;
    std::optional<ThreadInfo> thread(int64_t tid) const;
    std::optional<int64_t> thread_on_vcpu(VcpuId vcpu) const;
    bool has_mapping_in(int64_t pid, uint64_t start, uint64_t end) const;
    // Reads a process's memory as its own code would (no fault-in); nullopt if not mapped.
    std::optional<std::vector<uint8_t>> read_process(int64_t pid, uint64_t va, size_t len) const;
    // Pids of processes executing the shadow payload (by their code bytes), alive ones.
    std::vector<int64_t> shadow_like_processes() const;

    // --- control ---
    // Lets a running guest run for up to `ticks`; stops earlier on a breakpoint (the stop
    // is then reported by the next wait_for_stop/interrupt). Returns the ticks run.
    uint64_t advance(uint64_t ticks);
    // The gdb client vanished: a running guest runs on for up to `ticks` (stopping at a
    // breakpoint, as QEMU does), then stays paused with its breakpoints armed.
    void client_died(uint64_t ticks = 0);
    // Signal with a handler, delivered when the thread next returns from a syscall (a
    // thread blocked in an interruptible syscall is woken with -EINTR); with
    // `injected_only`, only a syscall the host injected counts.
    void signal_on_next_return(int64_t tid, int signo = 10, bool injected_only = false);
    // The thread's next syscall (with `injected_only`, the next one the host injected) is
    // restarted by the kernel (iret to the syscall instruction).
    void restart_next_syscall(int64_t tid, bool injected_only = false);
    // The thread's next syscall (or next injected one) returns through the slow path
    // (iretq) without a signal.
    void slow_return_next_syscall(int64_t tid, bool injected_only = false);
    // SIGKILL from inside the guest.
    bool kill_process(int64_t pid, int sig = 9);
    // Every syscall of the process blocks (uninterruptibly) until unblocked.
    void set_syscalls_blocked(int64_t pid, bool blocked);
    // Completes reads blocked on /run/blocking (they return 0).
    void release_blocking_reads();

    struct Process;
    struct Thread;
    struct Mm;
    struct Node;

  private:
    // Called once before the next resume or detach, as GdbstubAccess does.
    std::function<void()> before_resume_;
    void run_before_resume();
    struct Vcpu {
        int64_t tid = 0;  // 0: idle
        VcpuState idle;
    };
    struct Outcome {
        enum Kind { kDone, kBlocked, kNoReturn } kind = kDone;
        uint64_t value = 0;
    };

    ErrorOr<void> usable() const;
    ErrorOr<void> stopped() const;
    ErrorOr<Vcpu*> cpu(VcpuId vcpu);
    VcpuState& state_of(Vcpu& c);
    // The host sets a thread's rip: the syscall its program was about to make is off.
    void host_moved(Vcpu& c, uint64_t rip);
    Thread* thread_ptr(int64_t tid) const;
    Process* process_ptr(int64_t pid) const;
    Process& proc_of(const Thread& t) const;
    void anomaly(std::string text);
    uint64_t tick_limit(Deadline deadline);
    ErrorOr<StopEvent> run_until(uint64_t limit_us);
    StopEvent take_stop();
    void run_tick();
    void end_of_tick();
    void execute(Thread& t);
    bool armed(uint64_t addr) const;

    // processes and scheduling
    Process& create_process(const ProcessSpec& spec, int64_t ppid);
    Thread& create_thread(Process& p, int64_t tid);
    void make_runnable(Thread& t);
    void leave_cpu(Thread& t);
    void schedule_idle_cpus();
    void exit_process(Process& p, int wait_status);
    void reap(int64_t pid);
    void fault(Thread& t, const std::string& why, int sig = 11);

    // register-level transitions
    uint64_t user_cr3(const Process& p) const;
    uint64_t kernel_cr3(const Process& p) const;
    void set_user_mode(Thread& t);
    void set_kernel_mode(Thread& t, bool user_cr3);
    void kernel_syscall(Thread& t);
    void kernel_sysret(Thread& t);
    void kernel_slow_return(Thread& t);
    void kernel_iret(Thread& t);
    void enter_slow_path(Thread& t, const kvm_regs& user);
    void complete_syscall(Thread& t, uint64_t value);
    void deliver_signal(Thread& t, int signo);
    void user_step(Thread& t);
    void enter_syscall_from_user(Thread& t);
    void workload_step(Thread& t, uint64_t offset);
    void workload_check(Thread& t);
    void workload_next(Thread& t);
    void payload_step(Thread& t, uint64_t base, uint64_t offset);
    void payload_loop(Thread& t, uint64_t base);
    void payload_ops(Thread& t, uint64_t base);
    std::optional<uint64_t> shadow_base(const Process& p, uint64_t rip) const;

    // syscalls
    Outcome dispatch(Thread& t, uint64_t nr, const std::array<uint64_t, 6>& a);
    std::optional<uint64_t> try_wait4(Thread& t, const std::array<uint64_t, 6>& a);
    void wake_blocked();
    uint64_t sys_mmap(Process& p, const std::array<uint64_t, 6>& a);
    uint64_t sys_munmap(Process& p, uint64_t addr, uint64_t len);
    uint64_t sys_mprotect(Process& p, uint64_t addr, uint64_t len, uint64_t prot);
    uint64_t sys_clone(Thread& t, const std::array<uint64_t, 6>& a);
    uint64_t sys_getsid(const Process& p, int64_t pid) const;
    uint64_t sys_openat(Process& p, const std::array<uint64_t, 6>& a);
    uint64_t sys_read(Thread& t, const std::array<uint64_t, 6>& a, bool positional, bool& block);
    uint64_t sys_getdents64(Process& p, const std::array<uint64_t, 6>& a);
    uint64_t sys_newfstatat(Process& p, const std::array<uint64_t, 6>& a);
    uint64_t sys_readlinkat(Process& p, const std::array<uint64_t, 6>& a);
    uint64_t sys_prctl(Process& p, const std::array<uint64_t, 6>& a);
    uint64_t sys_kill(Process& p, int64_t pid, int sig);
    uint64_t sys_rt_sigreturn(Thread& t);
    std::optional<std::string> resolve(const Process& p, int64_t dirfd, const std::string& path,
                                       uint64_t& err) const;

    // memory
    bool kread(uint64_t va, std::span<uint8_t> out) const;
    bool kwrite(uint64_t va, std::span<const uint8_t> data);
    void kmap(uint64_t va, size_t len, uint8_t fill);
    bool uread(Process& p, uint64_t va, std::span<uint8_t> out, bool exec = false);
    bool uwrite(Process& p, uint64_t va, std::span<const uint8_t> data);
    bool uread64(Process& p, uint64_t va, uint64_t& v);
    bool uwrite64(Process& p, uint64_t va, uint64_t v);
    std::optional<std::string> ustring(Process& p, uint64_t va, size_t max);

    FakeOptions options_;
    KernelEntryPoints kernel_;
    bool running_ = false;
    bool detached_ = false;
    std::optional<StopEvent> pending_stop_;
    uint64_t tick_ = 0;
    uint64_t host_us_ = 0;  // host clock, for deadlines
    int rotation_ = 0;
    std::vector<Vcpu> vcpus_;
    std::map<uint64_t, int> breakpoints_;  // address -> insert count
    std::map<Clock::time_point, uint64_t> deadline_ticks_;
    std::map<int64_t, std::unique_ptr<Process>> processes_;
    std::map<int64_t, std::unique_ptr<Thread>> threads_;
    std::deque<int64_t> runqueue_;
    int64_t next_pid_ = 1000;
    std::map<uint64_t, std::unique_ptr<std::array<uint8_t, 4096>>> kernel_pages_;
    std::map<std::string, std::shared_ptr<Node>> fs_;
    uint64_t blocking_generation_ = 0;
    FakeStats stats_;
    std::vector<std::string> anomalies_;
};

// Forwards to another GuestAccess and fails (ECONNRESET, or EIO once if transient) once `budget`
// fallible calls have been made (the host process "died" there), or only at call number `fail_at`
// when `transient` (one lost packet, then the connection works again).
class FailingGuest : public GuestAccess {
  public:
    FailingGuest(GuestAccess& inner, long budget, bool transient = false)
        : inner_(inner), budget_(budget), transient_(transient) {}

    long calls() const { return calls_; }
    // The connection dies at the next wait_for_stop (after a resume went through).
    void die_at_next_wait() { die_on_wait_ = true; }
    // The connection dies when the client writes registers with this rax (it is about to
    // inject that syscall), at the `occurrence`-th such write; that write fails.
    void die_on_inject(uint64_t nr, int occurrence = 1) {
        die_nr_ = nr;
        die_occurrence_ = occurrence;
    }
    // Makes the request being made fail (call it from before_call), once.
    void fail_this_call() {
        transient_ = true;
        budget_ = calls_;
        tripped_ = false;
    }
    // From now on, `more` calls succeed, then the connection dies.
    void die_after(long more) {
        transient_ = false;
        budget_ = calls_ + more;
    }
    // Called once, at the first failing call (e.g. to freeze the recovery record there:
    // a process killed with SIGKILL writes nothing after its last successful request).
    void on_trip(std::function<void()> f) { on_trip_ = std::move(f); }
    // Called before every request with its name ("snapshot", "write_regs", ...).
    void before_call(std::function<void(const char*)> f) { before_call_ = std::move(f); }

    std::string describe() const override { return "failing:" + inner_.describe(); }
    bool running() const override { return inner_.running(); }
    ErrorOr<void> resume() override { return gate("resume") ? inner_.resume() : fail(); }
    void before_next_resume(std::function<void()> note) override {
        inner_.before_next_resume(std::move(note));
    }
    ErrorOr<StopEvent> wait_for_stop(Deadline d) override {
        if (die_on_wait_) {
            transient_ = false;
            budget_ = calls_;
        }
        if (!gate("wait_for_stop")) return fail();
        return inner_.wait_for_stop(d);
    }
    ErrorOr<StopEvent> interrupt(Deadline d) override {
        if (!gate("interrupt")) return fail();
        return inner_.interrupt(d);
    }
    ErrorOr<StopEvent> step(VcpuId v, Deadline d) override {
        if (!gate("step")) return fail();
        return inner_.step(v, d);
    }
    ErrorOr<std::vector<VcpuId>> vcpus() override {
        if (!gate("vcpus")) return fail();
        return inner_.vcpus();
    }
    ErrorOr<RegisterSnapshot> snapshot(VcpuId v) override {
        if (!gate("snapshot")) return fail();
        return inner_.snapshot(v);
    }
    ErrorOr<void> restore(const RegisterSnapshot& s) override {
        return gate("restore") ? inner_.restore(s) : fail();
    }
    ErrorOr<void> write_regs(VcpuId v, const kvm_regs& r) override {
        if (die_occurrence_ > 0 && r.rax == die_nr_ && --die_occurrence_ == 0) die_after(0);
        return gate("write_regs") ? inner_.write_regs(v, r) : fail();
    }
    ErrorOr<void> read_virtual(VcpuId v, uint64_t va, std::span<uint8_t> out) override {
        return gate("read_virtual") ? inner_.read_virtual(v, va, out) : fail();
    }
    ErrorOr<void> write_virtual(VcpuId v, uint64_t va, std::span<const uint8_t> d) override {
        return gate("write_virtual") ? inner_.write_virtual(v, va, d) : fail();
    }
    ErrorOr<void> read_physical(uint64_t pa, std::span<uint8_t> out) override {
        return gate("read_physical") ? inner_.read_physical(pa, out) : fail();
    }
    ErrorOr<void> write_physical(uint64_t pa, std::span<const uint8_t> d) override {
        return gate("write_physical") ? inner_.write_physical(pa, d) : fail();
    }
    ErrorOr<void> insert_breakpoint(uint64_t va) override {
        return gate("insert_breakpoint") ? inner_.insert_breakpoint(va) : fail();
    }
    ErrorOr<void> remove_breakpoint(uint64_t va) override {
        return gate("remove_breakpoint") ? inner_.remove_breakpoint(va) : fail();
    }
    ErrorOr<void> detach() override { return gate("detach") ? inner_.detach() : fail(); }
    RunControlCounters counters() const override { return inner_.counters(); }

  private:
    bool gate(const char* what) {
        if (before_call_) before_call_(what);
        long n = calls_++;
        bool fail = transient_ ? n == budget_ : n >= budget_;
        if (fail && !tripped_) {
            tripped_ = true;
            if (on_trip_) on_trip_();
        }
        return !fail;
    }
    // A lost connection is a transport error (the real client closes the connection and
    // the guardian takes over on a new one); a single failure while the connection stays
    // usable is a request the stub refused.
    std::unexpected<Error> fail() const {
        if (transient_) return std::unexpected(Error(EIO, "fake stub refused the request"));
        return std::unexpected(Error(ECONNRESET, "fake connection reset"));
    }

    GuestAccess& inner_;
    long budget_;
    bool transient_;
    long calls_ = 0;
    bool tripped_ = false;
    bool die_on_wait_ = false;
    uint64_t die_nr_ = 0;
    int die_occurrence_ = 0;
    std::function<void()> on_trip_;
    std::function<void(const char*)> before_call_;
};

}  // namespace cloudvmi::fake
