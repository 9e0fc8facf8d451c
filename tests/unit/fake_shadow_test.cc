// ShadowProcess against the fake guest: bootstrap, batches, park/acquire, termination.
#include <catch2/catch.hpp>
#include <climits>
#include <cstring>
#include <map>
#include <set>

#include "common/log.h"
#include "fake_guest.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/shadow_process.h"
#include "redirector/shadow/syscall_batch.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/fake_test_helpers.h"

using namespace cloudvmi;
using namespace cloudvmi::fake;
using namespace cloudvmi::x86abi;
using B = SyscallBatch;

namespace {

// Pids of the processes a workload thread was borrowed in (injected syscalls beyond the
// queries that vet a candidate).
std::vector<int64_t> borrowed(FakeGuest& g) {
    std::vector<int64_t> out;
    for (const auto& p : g.processes()) {
        if (p.zombie) continue;
        for (int64_t tid : p.tids) {
            auto t = g.thread(tid);
            if (t && !only_vetted(g, tid) && t->natural_syscalls > 0) {
                out.push_back(p.pid);
                break;
            }
        }
    }
    return out;
}

void check_no_zombies(FakeGuest& g) {
    for (const auto& p : g.processes()) {
        INFO("pid " << p.pid << " " << p.comm << " parent " << p.ppid);
        CHECK_FALSE(p.zombie);
    }
}

constexpr uint64_t kBandStart = SyscallInjector::kShadowBandStart;
constexpr uint64_t kBandEnd = SyscallInjector::kShadowBandEnd;

}  // namespace

TEST_CASE("fake shadow: create, run batches, park, re-acquire and terminate", "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    // The root process in another mount namespace is the first root thread to come by.
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 100, .container = true, .container_sleep_ms = 1});
    auto k = fixture_entry_points();
    RecoveryLog log;
    auto created = ShadowProcess::create(g, k, log, ShadowOptions{});
    REQUIRE(created);
    ShadowProcess& s = **created;
    CHECK(s.state() == ShadowProcess::State::kHeld);
    CHECK_FALSE(g.running());

    // The container process was tried first and refused by the namespace batch it ran,
    // before any clone; its region is unmapped.
    CHECK(s.bootstrap_stats().attempts == 2);
    auto tried = injected_kinds(g, kContainerPid);
    CHECK(tried.count(kReadlinkat));
    CHECK(tried.count(kMunmap));
    CHECK_FALSE(tried.count(kClone));
    CHECK_FALSE(g.has_mapping_in(kContainerPid, kBandStart, kBandEnd));

    // The shadow: a daemon of init, named, in the init mount namespace.
    auto info = g.process(s.pid());
    REQUIRE(info);
    CHECK(info->comm == "cloudvmi-shadow");
    CHECK(info->ppid == kInitPid);
    CHECK(info->uid == 0);
    CHECK(info->mnt_ns == kInitMntNs);
    CHECK(info->cwd == "/");
    CHECK(info->sid == s.pid());
    CHECK(info->fds.empty());
    CHECK(info->locked);
    CHECK(info->umask == 022);
    const uint64_t all_blockable = ~((1ULL << 8) | (1ULL << 18));
    CHECK(info->sigmask == all_blockable);
    // cmdline (arg_start..arg_end) reads "cloudvmi-shadow".
    REQUIRE(info->arg_end > info->arg_start);
    auto cmdline = g.read_process(s.pid(), info->arg_start, info->arg_end - info->arg_start);
    REQUIRE(cmdline);
    CHECK(std::string(cmdline->begin(), cmdline->end()) == std::string("cloudvmi-shadow", 16));
    CHECK(s.region() >= kBandStart);
    CHECK(s.region() < kBandEnd);
    // The shadow mapped the rest of its region itself.
    CHECK(g.has_mapping_in(s.pid(), s.region() + SHADOW_REGION_SIZE - 4096,
                           s.region() + SHADOW_REGION_SIZE));
    CHECK(SyscallInjector::address_space(s.cr3()) == info->cr3);
    CHECK(g.shadow_like_processes() == std::vector<int64_t>{s.pid()});

    // The hijacked parent: not the container process, region unmapped, helper reaped,
    // no zombie anywhere, only the shadow added.
    auto parents = borrowed(g);
    REQUIRE(parents.size() == 2);
    CHECK((parents[0] == kInitPid || parents[0] == kSleeperPid));
    CHECK(s.bootstrap_stats().borrowed ==
          "pid " + std::to_string(parents[0]) + " (/usr/sbin/" + g.process(parents[0])->comm + ")");
    CHECK(parents[1] == kContainerPid);
    for (int64_t pid : parents)
        CHECK_FALSE(g.has_mapping_in(pid, kBandStart, kBandEnd));
    check_no_zombies(g);
    std::set<int64_t> pids;
    for (const auto& p : g.processes())
        pids.insert(p.pid);
    CHECK(pids == std::set<int64_t>{kInitPid, kSleeperPid, kWorkerPid, kContainerPid, s.pid()});
    CHECK(log.current().shadow_phase == ShadowPhase::kHeld);
    CHECK(log.current().thread_phase == ThreadPhase::kNone);
    CHECK(log.current().parent_region == 0);

    SECTION("batches") {
        B b;
        auto pid = b.add(kGetpid, {});
        auto ppid = b.add(kGetppid, {});
        auto out = s.execute(b);
        REQUIRE(out);
        CHECK(out->result(pid) == s.pid());
        CHECK(out->result(ppid) == kInitPid);

        // open + read + close with result references.
        B m;
        auto path = m.input_string("/proc/meminfo");
        auto fd = m.add(kOpenat,
                        {B::imm_signed(kAtFdcwd), B::buf(path), B::imm(kORdonly), B::imm(0)}, true);
        auto data = m.output(4096);
        auto rd = m.add(kRead, {B::result_of(fd), B::buf(data), B::imm(4096)});
        m.filled_by(data, rd, B::Fill::kResultBytes);
        auto cl = m.add(kClose, {B::result_of(fd)});
        out = s.execute(m);
        REQUIRE(out);
        CHECK(out->result(fd) == 0);
        CHECK(out->result(rd) == static_cast<int64_t>(std::strlen(kMeminfo)));
        CHECK(std::string(out->bytes(data).begin(), out->bytes(data).end()) == kMeminfo);
        CHECK(out->result(cl) == 0);
        CHECK(g.process(s.pid())->fds.empty());

        // A failed op with OPF_STOP_ON_ERROR cancels everything after it.
        B st;
        auto p1 = st.input_string("/nonexistent");
        auto before = st.add(kGetuid, {});
        auto bad = st.add(kOpenat,
                          {B::imm_signed(kAtFdcwd), B::buf(p1), B::imm(kORdonly), B::imm(0)}, true);
        auto dep = st.add(kClose, {B::result_of(bad)});
        auto indep = st.add(kGetpid, {});
        out = s.execute(st);
        REQUIRE(out);
        CHECK(out->result(before) == 0);
        CHECK(out->error_of(bad) == ENOENT);
        CHECK(out->error_of(dep) == ECANCELED);
        CHECK(out->error_of(indep) == ECANCELED);

        // Without the flag, only the ops depending on the failed one are cancelled.
        B nd;
        auto p2 = nd.input_string("/etc/nothing");
        auto bad2 =
            nd.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(p2), B::imm(kORdonly), B::imm(0)});
        auto buf2 = nd.output(64);
        auto rd2 = nd.add(kRead, {B::result_of(bad2), B::buf(buf2), B::imm(64)});
        auto ok2 = nd.add(kGetpid, {});
        auto p3 = nd.input_string("/etc/cloudvmi-known");
        auto fd3 =
            nd.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(p3), B::imm(kORdonly), B::imm(0)});
        auto buf3 = nd.output(64);
        auto rd3 = nd.add(kPread64, {B::result_of(fd3), B::buf(buf3), B::imm(64), B::imm(0)});
        nd.filled_by(buf3, rd3, B::Fill::kResultBytes);
        auto st3 = nd.output(sizeof(Stat));
        auto fs3 = nd.add(kNewfstatat, {B::result_of(fd3), B::buf(nd.input_string("")), B::buf(st3),
                                        B::imm(kAtEmptyPath)});
        nd.filled_by(st3, fs3, B::Fill::kWhole);
        auto cl3 = nd.add(kClose, {B::result_of(fd3)});
        out = s.execute(nd);
        REQUIRE(out);
        CHECK(out->error_of(bad2) == ENOENT);
        CHECK(out->error_of(rd2) == ECANCELED);
        CHECK(out->result(ok2) == s.pid());
        CHECK(out->result(fd3) == 0);
        CHECK(std::string(out->bytes(buf3).begin(), out->bytes(buf3).end()) == kKnownContent);
        REQUIRE(out->result(fs3) == 0);
        Stat sb;
        std::memcpy(&sb, out->bytes(st3).data(), sizeof sb);
        CHECK(sb.st_size == static_cast<int64_t>(std::strlen(kKnownContent)));
        CHECK((sb.st_mode & 0170000) == 0100000);
        CHECK(out->result(cl3) == 0);

        // Directory listing and a few more calls.
        B d;
        auto dp = d.input_string("/etc");
        auto dfd = d.add(
            kOpenat,
            {B::imm_signed(kAtFdcwd), B::buf(dp), B::imm(kORdonly | kODirectory), B::imm(0)}, true);
        auto ents = d.output(1024);
        auto gd = d.add(kGetdents64, {B::result_of(dfd), B::buf(ents), B::imm(1024)});
        d.filled_by(ents, gd, B::Fill::kResultBytes);
        d.add(kClose, {B::result_of(dfd)});
        auto uts = d.output(kUtsnameSize);
        auto un = d.add(kUname, {B::buf(uts)});
        d.filled_by(uts, un, B::Fill::kWhole);
        auto lk = d.output(64);
        auto rl = d.add(kReadlinkat,
                        {B::imm_signed(kAtFdcwd), B::buf(d.input_string("/proc/self/ns/mnt")),
                         B::buf(lk), B::imm(64)});
        d.filled_by(lk, rl, B::Fill::kResultBytes);
        out = s.execute(d);
        REQUIRE(out);
        std::string names;
        const auto& e = out->bytes(ents);
        for (size_t at = 0; at + kDirent64NameOffset < e.size();) {
            uint16_t reclen;
            std::memcpy(&reclen, e.data() + at + 16, 2);
            REQUIRE(reclen > 0);
            names +=
                std::string(reinterpret_cast<const char*>(e.data() + at + kDirent64NameOffset)) +
                " ";
            at += reclen;
        }
        CHECK(names == ". .. cloudvmi-known secret ");
        CHECK(std::string(reinterpret_cast<const char*>(out->bytes(uts).data())) == "Linux");
        CHECK(std::string(out->bytes(lk).begin(), out->bytes(lk).end()) == kInitMntNs);
        // While held, only the shadow's own breakpoints are armed.
        for (uint64_t bp : g.armed_breakpoints()) {
            CHECK(bp >= s.region());
            CHECK(bp < s.region() + 4096);
        }
    }

    SECTION("park, re-acquire, terminate") {
        REQUIRE(s.park());
        CHECK(s.state() == ShadowProcess::State::kParked);
        CHECK(g.armed_breakpoints().empty());
        CHECK(g.running());
        CHECK(log.current().shadow_phase == ShadowPhase::kParked);
        CHECK(log.current().breakpoint_count == 0);
        // Parked, it sleeps with back-off and costs no stop.
        uint64_t stops = g.stats().stops;
        g.advance(1000);
        CHECK(g.stats().stops == stops);
        auto hb = g.read_process(s.pid(), s.region() + SHADOW_CTRL_OFFSET + CTRL_HEARTBEAT, 16);
        REQUIRE(hb);
        uint64_t heartbeat, sleep_cur;
        std::memcpy(&heartbeat, hb->data(), 8);
        auto sc = g.read_process(s.pid(), s.region() + SHADOW_CTRL_OFFSET + CTRL_SLEEP_CUR, 8);
        std::memcpy(&sleep_cur, sc->data(), 8);
        CHECK(heartbeat > 20);
        CHECK(heartbeat < 200);
        CHECK(sleep_cur == ShadowOptions{}.sleep_max_ns);

        // execute() re-acquires the parked shadow.
        B b;
        auto uid = b.add(kGetuid, {});
        auto out = s.execute(b);
        REQUIRE(out);
        CHECK(out->result(uid) == 0);
        CHECK(s.state() == ShadowProcess::State::kHeld);
        CHECK_FALSE(g.running());
        CHECK(s.last_acquire_ms() < 3000);

        REQUIRE(s.park());
        REQUIRE(s.terminate());  // from parked: acquire, then exit
        CHECK(s.state() == ShadowProcess::State::kGone);
        CHECK(g.armed_breakpoints().empty());
        CHECK(g.running());
        CHECK(log.current().shadow_phase == ShadowPhase::kNone);
        g.advance(100);
        REQUIRE(g.interrupt(Deadline::after_ms(100)));
        CHECK_FALSE(g.process(s.pid()));  // exited and reaped by init
        CHECK(g.shadow_like_processes().empty());
        check_no_zombies(g);
        CHECK(s.terminate());  // idempotent
        B again;
        again.add(kGetpid, {});
        CHECK(s.execute(again).error().code() == ESRCH);
    }

    // Whatever happened above, every workload thread still runs correctly.
    if (g.running()) REQUIRE(g.interrupt(Deadline::after_ms(100)));
    std::map<int64_t, uint64_t> before;
    for (int64_t pid : {kSleeperPid, kWorkerPid, kContainerPid})
        before[pid] = g.thread(pid)->checked_returns;
    if (s.state() == ShadowProcess::State::kHeld) REQUIRE(s.park());
    run_free(g, 200);
    for (int64_t pid : {kSleeperPid, kWorkerPid, kContainerPid}) {
        INFO("pid " << pid);
        CHECK(g.thread(pid)->checked_returns > before[pid]);
    }
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: a shadow killed inside the guest gives ESRCH within the acquire timeout",
          "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    FakeGuest g(FakeOptions{.vcpus = 2});
    auto k = fixture_entry_points();
    RecoveryLog log;
    ShadowOptions o;
    auto created = ShadowProcess::create(g, k, log, o);
    REQUIRE(created);
    ShadowProcess& s = **created;
    int64_t pid = s.pid();
    REQUIRE(s.park());
    g.advance(200);
    REQUIRE(g.kill_process(pid));

    B b;
    b.add(kGetpid, {});
    auto start = Clock::now();
    uint64_t t0 = g.now();
    auto out = s.execute(b);
    REQUIRE_FALSE(out);
    CHECK(out.error().code() == ESRCH);
    CHECK(elapsed_ms(start) < static_cast<double>(o.acquire_timeout.count()));
    CHECK(g.now() - t0 <= static_cast<uint64_t>(o.acquire_timeout.count()) + 1);
    CHECK(s.state() == ShadowProcess::State::kLost);
    CHECK(g.armed_breakpoints().empty());
    CHECK_FALSE(g.running());
    CHECK(log.current().shadow_phase == ShadowPhase::kNone);
    CHECK(s.execute(b).error().code() == ESRCH);
    CHECK(s.terminate());
    run_free(g, 50);
    CHECK_FALSE(g.process(pid));  // init reaped it
    check_no_zombies(g);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: a batch blocked in the guest times out and the shadow is given up",
          "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    FakeGuest g;
    auto k = fixture_entry_points();
    RecoveryLog log;
    ShadowOptions o;
    o.batch_timeout = Millis(300);
    auto created = ShadowProcess::create(g, k, log, o);
    REQUIRE(created);
    ShadowProcess& s = **created;
    B b;
    auto path = b.input_string("/run/blocking");
    auto fd =
        b.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(path), B::imm(kORdonly), B::imm(0)}, true);
    auto buf = b.output(16);
    b.add(kRead, {B::result_of(fd), B::buf(buf), B::imm(16)});
    uint64_t t0 = g.now();
    auto out = s.execute(b);
    REQUIRE_FALSE(out);
    CHECK(out.error().code() == ETIMEDOUT);
    CHECK(g.now() - t0 >= 299);
    CHECK(s.state() == ShadowProcess::State::kLost);
    CHECK(g.armed_breakpoints().empty());
    CHECK(g.thread(s.pid())->sched == SchedState::kBlocked);
    // Once the read returns the shadow finishes its batch and goes back to its loop.
    g.release_blocking_reads();
    run_free(g, 100);
    CHECK(g.thread(s.pid())->sched != SchedState::kDead);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: a shadow whose lease is not renewed exits by itself", "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    FakeGuest g;
    auto k = fixture_entry_points();
    RecoveryLog log;
    ShadowOptions o;
    o.lease = Millis(100);  // the minimum: 100 loop iterations
    o.sleep_max_ns = 10'000'000;
    auto created = ShadowProcess::create(g, k, log, o);
    REQUIRE(created);
    int64_t pid = (*created)->pid();
    REQUIRE((*created)->park());
    g.advance(500);
    CHECK(g.process(pid));
    g.advance(1500);
    REQUIRE(g.interrupt(Deadline::after_ms(100)));
    CHECK_FALSE(g.process(pid));
    check_no_zombies(g);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: the payload model runs raw op records like shadow_payload.S", "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    FakeGuest g(FakeOptions{.worker = false});
    RecoveryLog log;
    auto created = ShadowProcess::create(g, fixture_entry_points(), log, ShadowOptions{});
    REQUIRE(created);
    ShadowProcess& s = **created;
    const uint64_t ops = s.region() + SHADOW_OPS_OFFSET;
    VcpuId v = 0;
    auto cpus = g.vcpus();
    REQUIRE(cpus);
    for (VcpuId c : *cpus) {
        if (g.thread_on_vcpu(c) == s.pid()) v = c;
    }
    REQUIRE(v != 0);
    auto run = [&](uint64_t count, const std::vector<std::array<uint64_t, 10>>& records) {
        std::vector<uint8_t> area(BATCH_HEADER_SIZE + records.size() * OP_SIZE, 0);
        std::memcpy(area.data(), &count, 8);
        for (size_t i = 0; i < records.size(); ++i) {
            std::memcpy(area.data() + BATCH_HEADER_SIZE + i * OP_SIZE, records[i].data(), OP_SIZE);
        }
        REQUIRE(g.write_virtual(v, ops, area));
        auto snap = g.snapshot(v);
        REQUIRE(snap);
        kvm_regs r = snap->state.regs;
        r.rip = s.region() + ShadowCode::run_batch();
        REQUIRE(g.write_regs(v, r));
        REQUIRE(g.resume());
        auto ev = g.wait_for_stop(Deadline::after_ms(5000));
        REQUIRE(ev);
        CHECK(ev->vcpu == v);
        CHECK(g.snapshot(v)->state.regs.rip == s.region() + ShadowCode::batch_done());
        std::vector<uint64_t> results;
        for (size_t i = 0; i < records.size(); ++i) {
            uint64_t res = 0;
            REQUIRE(g.read_virtual(v, ops + BATCH_HEADER_SIZE + i * OP_SIZE + OP_RESULT,
                                   std::span(reinterpret_cast<uint8_t*>(&res), 8)));
            results.push_back(res);
        }
        return results;
    };
    const uint64_t unset = static_cast<uint64_t>(-ECANCELED);
    auto rec = [&](uint64_t nr, std::array<uint64_t, 6> args, uint64_t refs, uint64_t flags) {
        return std::array<uint64_t, 10>{nr,      args[0], args[1], args[2], args[3],
                                        args[4], args[5], refs,    flags,   unset};
    };
    // A forward reference is -EINVAL; its dependants are cancelled; with
    // OPF_STOP_ON_ERROR on the bad one, everything after it is cancelled.
    auto res = run(4, {rec(kGetpid, {}, 0, 0), rec(kClose, {2}, 1, 0), rec(kClose, {1}, 1, 0),
                       rec(kGettid, {}, 0, 0)});
    CHECK(res[0] == static_cast<uint64_t>(s.pid()));
    CHECK(res[1] == static_cast<uint64_t>(-EINVAL));
    CHECK(res[2] == static_cast<uint64_t>(-ECANCELED));
    CHECK(res[3] == static_cast<uint64_t>(s.pid()));
    res = run(3, {rec(kGetpid, {}, 0, 0), rec(kClose, {5}, 1, OPF_STOP_ON_ERROR),
                  rec(kGetuid, {}, 0, 0)});
    CHECK(res[1] == static_cast<uint64_t>(-EINVAL));
    CHECK(res[2] == static_cast<uint64_t>(-ECANCELED));
    // A reference replaces the argument in the record with the result it names.
    res = run(2, {rec(kGetpid, {}, 0, 0), rec(kKill, {0, 0}, 1, 0)});
    CHECK(res[1] == 0);  // kill(getpid(), 0)
    uint64_t patched = 0;
    REQUIRE(g.read_virtual(v, ops + BATCH_HEADER_SIZE + OP_SIZE + OP_ARGS,
                           std::span(reinterpret_cast<uint8_t*>(&patched), 8)));
    CHECK(patched == static_cast<uint64_t>(s.pid()));
    // The op count is clamped to SHADOW_MAX_OPS.
    std::vector<std::array<uint64_t, 10>> many(SHADOW_MAX_OPS + 1, rec(kGetuid, {}, 0, 0));
    many.back() = rec(kGetuid, {}, 0, 0);
    res = run(100000, many);
    CHECK(res[SHADOW_MAX_OPS - 1] == 0);
    CHECK(res[SHADOW_MAX_OPS] == unset);  // never run
    // DONE_SEQ follows REQ_SEQ and the back-off is reset.
    uint64_t ctrl[5];
    REQUIRE(g.read_virtual(v, s.region() + SHADOW_CTRL_OFFSET + CTRL_LEASE,
                           std::span(reinterpret_cast<uint8_t*>(ctrl), sizeof ctrl)));
    CHECK(ctrl[1] == ctrl[2]);
    CHECK(ctrl[3] == ShadowOptions{}.sleep_min_ns);
    // The shadow object goes on as if nothing happened.
    B b;
    auto pid = b.add(kGetpid, {});
    auto out = s.execute(b);
    REQUIRE(out);
    CHECK(out->result(pid) == s.pid());
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

namespace {

// Everything a refused candidate may keep of its trial: nothing. It was asked no more than
// `asked` (besides pid queries, which the vetting may or may not ask), maps no shadow
// region, never cloned, and still runs.
void check_refused(FakeGuest& g, int64_t pid, const std::set<uint64_t>& asked) {
    INFO("pid " << pid);
    CHECK(injected_beyond_pid_queries(g, pid) == asked);
    CHECK_FALSE(g.has_mapping_in(pid, kBandStart, kBandEnd));
    auto p = g.process(pid);
    REQUIRE(p);
    CHECK_FALSE(p->zombie);
    for (const auto& q : g.processes())
        CHECK(q.ppid != pid);
}

std::map<int64_t, uint64_t> progress_of(FakeGuest& g, std::initializer_list<int64_t> pids) {
    std::map<int64_t, uint64_t> out;
    for (int64_t pid : pids)
        out[pid] = g.thread(pid)->checked_returns;
    return out;
}

}  // namespace

TEST_CASE("fake shadow: a root process under a seccomp filter is never borrowed", "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    // Its filter kills it (SIGSYS) on anything but its own syscalls and a few queries.
    ProcessSpec sandboxed;
    sandboxed.pid = 500;
    sandboxed.comm = "sandboxed";
    sandboxed.seccomp = 2;
    sandboxed.loop = {Step::sleep(1)};
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 100, .worker = false, .extra = {sandboxed}});
    RecoveryLog log;
    auto created = ShadowProcess::create(g, fixture_entry_points(), log, ShadowOptions{});
    REQUIRE(created);
    ShadowProcess& s = **created;
    CHECK(s.bootstrap_stats().borrowed == "pid 100 (/usr/sbin/sleeper)");
    CHECK(s.bootstrap_stats().injector.rejected.find("seccomp mode 2") != std::string::npos);
    CHECK(g.process(500)->seccomp == 2);
    check_refused(g, 500, {kGetuid, kPrctl});
    CHECK(g.thread(500)->injected_by_nr.at(kPrctl) >= 1);
    auto before = progress_of(g, {500, kSleeperPid});
    REQUIRE(s.park());
    run_free(g, 200);
    CHECK(g.thread(500)->checked_returns > before[500]);
    CHECK(g.thread(kSleeperPid)->checked_returns > before[kSleeperPid]);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: a process that may not make memory executable is refused and left clean",
          "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    ProcessSpec noexec;
    noexec.pid = 600;
    noexec.comm = "noexec";
    noexec.deny_exec = true;
    noexec.loop = {Step::sleep(1)};
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 100, .worker = false, .extra = {noexec}});
    RecoveryLog log;
    auto created = ShadowProcess::create(g, fixture_entry_points(), log, ShadowOptions{});
    REQUIRE(created);
    ShadowProcess& s = **created;
    // Refused at mprotect: its region unmapped again, no batch run in it, no clone.
    CHECK(s.bootstrap_stats().attempts == 2);
    CHECK(s.bootstrap_stats().borrowed == "pid 100 (/usr/sbin/sleeper)");
    check_refused(g, 600, {kGetuid, kPrctl, kMmap, kMprotect, kMunmap});
    CHECK(g.thread(600)->injected_by_nr.at(kMprotect) == 1);
    CHECK(g.shadow_like_processes() == std::vector<int64_t>{s.pid()});
    CHECK(log.current().parent_region == 0);
    auto before = progress_of(g, {600});
    REQUIRE(s.park());
    run_free(g, 200);
    CHECK(g.thread(600)->checked_returns > before[600]);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: processes outside the initial pid or user namespace are refused",
          "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    // One in another pid namespace (it cannot see kthreadd: /proc/2 is ENOENT), one in
    // another user namespace (same mount and pid namespaces).
    ProcessSpec pidns;
    pidns.pid = 700;
    pidns.comm = "pidns-app";
    pidns.pid_ns = kContainerPidNs;
    pidns.loop = {Step::sleep(1)};
    ProcessSpec userns;
    userns.pid = 800;
    userns.comm = "userns-app";
    userns.user_ns = kContainerUserNs;
    userns.loop = {Step::sleep(1)};
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 400, .worker = false, .extra = {pidns, userns}});
    RecoveryLog log;
    auto created = ShadowProcess::create(g, fixture_entry_points(), log, ShadowOptions{});
    REQUIRE(created);
    ShadowProcess& s = **created;
    CHECK(s.bootstrap_stats().attempts == 3);
    CHECK(s.bootstrap_stats().borrowed == "pid 100 (/usr/sbin/sleeper)");
    for (int64_t pid : {700, 800})
        check_refused(g, pid,
                      {kGetuid, kPrctl, kMmap, kMprotect, kReadlinkat, kNewfstatat, kMunmap});
    // The shadow lives in the initial namespaces, like the process it came from.
    auto info = g.process(s.pid());
    REQUIRE(info);
    CHECK(info->pid_ns == kInitPidNs);
    CHECK(info->user_ns == kInitUserNs);
    REQUIRE(s.park());
    run_free(g, 100);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: a chrooted root process is refused before any clone", "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    // readlink(/proc/self/root) says "/" inside a chroot: the root directories themselves
    // are compared.
    ProcessSpec jailed;
    jailed.pid = 900;
    jailed.comm = "jailed-app";
    jailed.root = "/tmp";
    jailed.loop = {Step::sleep(1)};
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 150, .worker = false, .extra = {jailed}});
    RecoveryLog log;
    auto created = ShadowProcess::create(g, fixture_entry_points(), log, ShadowOptions{});
    REQUIRE(created);
    ShadowProcess& s = **created;
    CHECK(s.bootstrap_stats().attempts == 2);
    CHECK(s.bootstrap_stats().borrowed == "pid 100 (/usr/sbin/sleeper)");
    check_refused(g, 900, {kGetuid, kPrctl, kMmap, kMprotect, kReadlinkat, kNewfstatat, kMunmap});
    REQUIRE(s.park());
    run_free(g, 100);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: the borrowed process runs a batch of the shadow code and comes back",
          "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    // What the bootstrap does in the borrowed process P, step by step: the payload model
    // runs run_batch in a process that is not the shadow, and every landing holds.
    FakeGuest g(FakeOptions{.worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, Deadline::after_ms(20000));
    REQUIRE(inj.hijack());
    int64_t tid = *g.thread_on_vcpu(inj.vcpu());
    int64_t pid = g.thread(tid)->pid;
    kvm_regs original = inj.original_regs();
    uint64_t hint = kBandStart + 0x300000000ULL;
    uint64_t region = *inj.syscall(
        kMmap, {hint, SHADOW_PARENT_MAP_SIZE, kProtRead | kProtWrite,
                kMapShared | kMapAnonymous | kMapPopulate | kMapFixedNoreplace, ~uint64_t{0}, 0});
    REQUIRE(region == hint);
    REQUIRE(inj.write_memory(region, ShadowCode::bytes()));
    // A landing must follow a `syscall` instruction.
    auto bad = inj.set_landing(region + ShadowCode::run_batch());
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code() == EPROTO);
    CHECK(inj.landing() == original.rcx);
    REQUIRE(*inj.syscall(kMprotect, {region, 0x1000, kProtRead | kProtExec}) == 0);

    SyscallBatch b;
    auto getpid = b.add(kGetpid, {});
    auto gettid = b.add(kGettid, {});
    auto exe = b.output(64);
    auto rl = b.add(kReadlinkat, {SyscallBatch::imm_signed(kAtFdcwd),
                                  SyscallBatch::buf(b.input_string("/proc/self/exe")),
                                  SyscallBatch::buf(exe), SyscallBatch::imm(64)});
    auto init_pid_ns = b.output(64);
    auto rl2 = b.add(kReadlinkat, {SyscallBatch::imm_signed(kAtFdcwd),
                                   SyscallBatch::buf(b.input_string("/proc/2/ns/pid")),
                                   SyscallBatch::buf(init_pid_ns), SyscallBatch::imm(64)});
    uint64_t data = region + SHADOW_DATA_OFFSET;
    EncodedBatch enc = encode_batch(b, data);
    REQUIRE(inj.write_memory(region + SHADOW_OPS_OFFSET, enc.op_records));
    for (const auto& chunk : enc.inputs)
        REQUIRE(inj.write_memory(data + chunk.offset, chunk.bytes));
    uint64_t natural_before = g.thread(tid)->natural_syscalls;
    REQUIRE(inj.run_code(region + ShadowCode::run_batch(), region + ShadowCode::batch_done()));
    auto t = g.thread(tid);
    CHECK(t->cpu.user_mode());
    CHECK(t->cpu.regs.rip == region + ShadowCode::batch_done());
    CHECK(t->cpu.regs.rsp == original.rsp);
    CHECK(t->natural_syscalls == natural_before);  // the payload's, not its own
    CHECK(inj.landing() == original.rcx);
    std::vector<uint8_t> records(enc.op_records.size());
    REQUIRE(inj.read_memory(region + SHADOW_OPS_OFFSET, records));
    auto results = decode_results(records, b.ops().size());
    CHECK(results[getpid] == static_cast<uint64_t>(pid));
    CHECK(results[gettid] == static_cast<uint64_t>(tid));
    REQUIRE(results[rl] == std::strlen("/usr/sbin/sleeper"));
    std::vector<uint8_t> name(results[rl]);
    REQUIRE(inj.read_memory(data + b.buffers()[exe].offset, name));
    CHECK(std::string(name.begin(), name.end()) == "/usr/sbin/sleeper");
    REQUIRE(results[rl2] == std::strlen(kInitPidNs));
    std::vector<uint8_t> ns(results[rl2]);
    REQUIRE(inj.read_memory(data + b.buffers()[init_pid_ns].offset, ns));
    CHECK(std::string(ns.begin(), ns.end()) == kInitPidNs);

    // From there, a syscall goes back to the thread's own landing.
    CHECK(*inj.syscall(kGetppid, {}) == static_cast<uint64_t>(kInitPid));
    CHECK(g.thread(tid)->cpu.regs.rip == original.rcx);
    // The region's landing, as for the clone: syscall at +0x0e, back at the child entry.
    REQUIRE(inj.set_landing(region + ShadowCode::child_entry()));
    CHECK(log.current().landing == region + ShadowCode::child_entry());
    CHECK(*inj.syscall(kGetpid, {}) == static_cast<uint64_t>(pid));
    CHECK(g.thread(tid)->cpu.regs.rip == region + ShadowCode::child_entry());
    CHECK(g.armed_breakpoints() == std::vector<uint64_t>{region + ShadowCode::child_entry()});

    // Back to the own landing; the region goes in two parts (the mprotect split it).
    REQUIRE(inj.set_landing(original.rcx));
    REQUIRE(*inj.syscall(kMunmap, {region, 0x1000}) == 0);
    CHECK_FALSE(g.has_mapping_in(pid, region, region + 0x1000));
    CHECK(g.has_mapping_in(pid, region + 0x1000, region + SHADOW_PARENT_MAP_SIZE));
    REQUIRE(*inj.syscall(kMunmap, {region + 0x1000, SHADOW_PARENT_MAP_SIZE - 0x1000}) == 0);
    CHECK_FALSE(g.has_mapping_in(pid, kBandStart, kBandEnd));
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    kvm_regs want = original;
    want.rip = original.rcx;
    want.rflags = (original.r11 & 0x3C7FD7) | 2;
    kvm_regs now = g.thread(tid)->cpu.regs;
    CHECK(std::memcmp(&now, &want, sizeof now) == 0);
    uint64_t c0 = g.thread(tid)->checked_returns;
    run_free(g, 100);
    CHECK(g.thread(tid)->checked_returns > c0);
    CHECK(g.shadow_like_processes().empty());
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: no kernel-wide breakpoint is armed while a thread is borrowed", "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    // Refused candidates (uid, namespace) make the bootstrap hunt more than once.
    FakeGuest g(FakeOptions{
        .vcpus = 2, .sleeper_delay_ms = 100, .container = true, .container_sleep_ms = 1});
    auto k = fixture_entry_points();
    RecoveryLog log;
    FailingGuest conn(g, LONG_MAX);
    std::vector<std::string> bad;
    int hunting = 0, borrowed_resumes = 0;
    conn.before_call([&](const char* what) {
        bool kernel_armed = false;
        for (uint64_t a : g.armed_breakpoints()) {
            kernel_armed = kernel_armed || a == k.sysret || a == k.slow_return || a == k.iret ||
                           a == k.syscall_entry;
        }
        bool held = log.current().thread_phase != ThreadPhase::kNone;
        bool resume = std::strcmp(what, "resume") == 0;
        if (resume && !held && kernel_armed) ++hunting;
        if (resume && held) ++borrowed_resumes;
        if (kernel_armed && (held || std::strcmp(what, "write_regs") == 0)) bad.push_back(what);
    });
    auto created = ShadowProcess::create(conn, k, log, ShadowOptions{});
    REQUIRE(created);
    ShadowProcess& s = **created;
    CHECK(s.bootstrap_stats().attempts == 2);
    B b;
    b.add(kGetpid, {});
    REQUIRE(s.execute(b));
    REQUIRE(s.park());
    REQUIRE(s.execute(b));
    REQUIRE(s.terminate());
    CHECK(hunting >= 2);
    CHECK(borrowed_resumes >= 20);
    INFO("requests with the kernel-wide trap armed: " << bad.size());
    CHECK(bad.empty());
    REQUIRE(g.interrupt(Deadline::after_ms(100)));
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake shadow: a bootstrap on a quiet guest costs a handful of VM stops", "[fake]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    // Every stop pauses the VM (and flushes TCG's translations): one at the kernel-wide
    // trap, then one per injected syscall or batch, one for the helper passing the landing
    // and one to catch the shadow, whatever else the guest does meanwhile.
    for (int vcpus : {1, 2}) {
        INFO(vcpus << " vCPUs");
        FakeGuest g(FakeOptions{.vcpus = vcpus, .worker = false});
        RecoveryLog log;
        auto before = g.counters();
        auto created = ShadowProcess::create(g, fixture_entry_points(), log, ShadowOptions{});
        REQUIRE(created);
        auto after = g.counters();
        const auto& stats = (*created)->bootstrap_stats();
        CHECK(stats.attempts == 1);
        CHECK(stats.injector.kernel_trap_stops == 1);
        CHECK(after.stops - before.stops <= 20);
        CHECK(after.breakpoint_changes - before.breakpoint_changes <= 24);
        INFO(g.anomalies_text());
        CHECK(g.anomalies().empty());
    }
}
