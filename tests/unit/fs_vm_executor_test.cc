// fs/vm_executor.h: Job's reply-once rules and the per-VM queue with its worker thread.
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "fs/vm_executor.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;
using namespace std::chrono_literals;

namespace {

// Waits until `pred` holds, up to `limit`.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = 5000ms) {
    auto until = Clock::now() + limit;
    while (Clock::now() < until) {
        if (pred()) return true;
        std::this_thread::sleep_for(1ms);
    }
    return pred();
}

// What happened to one job.
struct Probe {
    std::atomic<int> runs{0};
    std::atomic<int> fails{0};
    std::atomic<int> sends{0};
    std::atomic<int> last_err{0};
    std::atomic<bool> last_ran{false};
    std::atomic<bool> interrupted{false};
    std::thread::id thread;
    std::mutex m;
};

// A job that records its run/fail calls in `p` and answers (with a send) when it runs.
std::shared_ptr<Job> probe_job(const std::shared_ptr<Probe>& p,
                               Clock::time_point deadline = Clock::time_point::max(),
                               std::function<void()> body = nullptr) {
    return std::make_shared<Job>(
        [p, body](Job& job) {
            {
                std::lock_guard lock(p->m);
                p->thread = std::this_thread::get_id();
            }
            if (body) body();
            job.answer([p] { ++p->sends; });
            ++p->runs;
        },
        [p](int err, bool ran) {
            p->last_err = err;
            p->last_ran = ran;
            ++p->fails;
        },
        [p] { return p->interrupted.load(); }, deadline);
}

// A job that blocks the worker until opened; declare it after the executor so that it
// opens (and the worker can be joined) whatever way the test ends.
class Gate {
  public:
    Gate() : released_(release_.get_future().share()) {}
    ~Gate() { open(); }
    Gate(const Gate&) = delete;
    Gate& operator=(const Gate&) = delete;

    std::shared_ptr<Job> job(const std::shared_ptr<Probe>& p,
                             std::function<void(Job&)> after = nullptr) {
        auto released = released_;
        auto started = started_;
        return std::make_shared<Job>(
            [p, released, started, after](Job& job) {
                started->set_value();
                released.wait();
                if (after) after(job);
                ++p->runs;
            },
            [p](int err, bool ran) {
                p->last_err = err;
                p->last_ran = ran;
                ++p->fails;
            },
            [p] { return p->interrupted.load(); }, Clock::time_point::max());
    }
    // Waits for the gate job to be running on the worker.
    bool wait_started() { return started_->get_future().wait_for(5s) == std::future_status::ready; }
    void open() {
        if (!opened_) {
            opened_ = true;
            release_.set_value();
        }
    }

  private:
    std::promise<void> release_;
    std::shared_future<void> released_;
    std::shared_ptr<std::promise<void>> started_ = std::make_shared<std::promise<void>>();
    bool opened_ = false;
};

std::shared_ptr<Probe> probe() {
    return std::make_shared<Probe>();
}

}  // namespace

// --- Job ---

TEST_CASE("Job::claim is true exactly once", "[fs]") {
    Job job([](Job&) {}, [](int, bool) {}, nullptr, Clock::time_point::max());
    CHECK(job.claim());
    CHECK_FALSE(job.claim());
    CHECK_FALSE(job.claim());

    // Among racing threads, one wins.
    for (int round = 0; round < 50; ++round) {
        Job j([](Job&) {}, [](int, bool) {}, nullptr, Clock::time_point::max());
        std::atomic<int> winners{0};
        std::vector<std::thread> threads;
        for (int i = 0; i < 6; ++i)
            threads.emplace_back([&] { winners += j.claim() ? 1 : 0; });
        for (auto& t : threads)
            t.join();
        CHECK(winners.load() == 1);
    }
}

TEST_CASE("Job::answer sends at most once; fail after it does nothing", "[fs]") {
    auto p = probe();
    auto job = probe_job(p);
    int sends = 0;
    CHECK(job->answer([&] { ++sends; }));
    CHECK(sends == 1);
    CHECK_FALSE(job->answer([&] { ++sends; }));
    CHECK(sends == 1);
    job->fail(EIO);
    CHECK(p->fails.load() == 0);
    p->interrupted = true;
    CHECK_FALSE(job->answer_if_interrupted());
    CHECK(p->fails.load() == 0);
}

TEST_CASE("Job::fail answers once with ran=false and blocks later answers", "[fs]") {
    auto p = probe();
    auto job = probe_job(p);
    job->fail(ETIMEDOUT);
    CHECK(p->fails.load() == 1);
    CHECK(p->last_err.load() == ETIMEDOUT);
    CHECK_FALSE(p->last_ran.load());
    job->fail(EIO);
    CHECK(p->fails.load() == 1);
    CHECK(p->last_err.load() == ETIMEDOUT);
    int sends = 0;
    CHECK_FALSE(job->answer([&] { ++sends; }));
    CHECK(sends == 0);
}

TEST_CASE("Job::answer_if_interrupted", "[fs]") {
    SECTION("not interrupted: nothing is sent") {
        auto p = probe();
        auto job = probe_job(p);
        CHECK_FALSE(job->answer_if_interrupted());
        CHECK(p->fails.load() == 0);
        // The request can still be answered normally.
        CHECK(job->answer([] {}));
    }
    SECTION("interrupted and unanswered: EINTR with ran=true, once") {
        auto p = probe();
        auto job = probe_job(p);
        CHECK_FALSE(job->interrupted());
        p->interrupted = true;
        CHECK(job->interrupted());
        CHECK(job->answer_if_interrupted());
        CHECK(p->fails.load() == 1);
        CHECK(p->last_err.load() == EINTR);
        CHECK(p->last_ran.load());
        CHECK_FALSE(job->answer_if_interrupted());
        CHECK(p->fails.load() == 1);
        int sends = 0;
        CHECK_FALSE(job->answer([&] { ++sends; }));
        CHECK(sends == 0);
    }
    SECTION("interrupted but already failed: nothing more") {
        auto p = probe();
        auto job = probe_job(p);
        job->fail(ETIMEDOUT);
        p->interrupted = true;
        CHECK_FALSE(job->answer_if_interrupted());
        CHECK(p->fails.load() == 1);
        CHECK(p->last_err.load() == ETIMEDOUT);
    }
    SECTION("no interruption function: never interrupted") {
        int fails = 0;
        Job job([](Job&) {}, [&](int, bool) { ++fails; }, nullptr, Clock::time_point::max());
        CHECK_FALSE(job.interrupted());
        CHECK_FALSE(job.answer_if_interrupted());
        CHECK(fails == 0);
    }
}

TEST_CASE("Job: deadline and run", "[fs]") {
    auto when = Clock::now() + 42s;
    int runs = 0;
    Job* seen = nullptr;
    Job job(
        [&](Job& j) {
            ++runs;
            seen = &j;
        },
        [](int, bool) {}, nullptr, when);
    CHECK(job.deadline() == when);
    job.run();
    CHECK(runs == 1);
    CHECK(seen == &job);
}

// --- VmExecutor ---

TEST_CASE("VmExecutor runs jobs in submission order on one worker thread", "[fs]") {
    VmExecutor ex("order");
    constexpr int kJobs = 200;
    std::mutex m;
    std::vector<int> order;
    std::set<std::thread::id> threads;
    std::vector<std::shared_ptr<Probe>> probes;
    for (int i = 0; i < kJobs; ++i) {
        auto p = probe();
        probes.push_back(p);
        REQUIRE(ex.submit(probe_job(p, Clock::now() + 60s, [&, i] {
            std::lock_guard lock(m);
            order.push_back(i);
            threads.insert(std::this_thread::get_id());
        })));
    }
    REQUIRE(eventually([&] { return probes.back()->runs.load() == 1; }));
    std::lock_guard lock(m);
    REQUIRE(order.size() == kJobs);
    for (int i = 0; i < kJobs; ++i)
        CHECK(order[i] == i);
    CHECK(threads.size() == 1);
    CHECK(threads.count(std::this_thread::get_id()) == 0);
    for (auto& p : probes) {
        CHECK(p->runs.load() == 1);
        CHECK(p->sends.load() == 1);
        CHECK(p->fails.load() == 0);
    }
    CHECK(ex.queued() == 0);
}

TEST_CASE("VmExecutor::submit refuses a full queue", "[fs]") {
    VmExecutor ex("full", 2);
    Gate gate;
    auto pg = probe();
    REQUIRE(ex.submit(gate.job(pg)));
    REQUIRE(gate.wait_started());  // the gate is running, no longer queued
    CHECK(ex.queued() == 0);

    auto pb = probe(), pc = probe(), pd = probe();
    CHECK(ex.submit(probe_job(pb)));
    CHECK(ex.submit(probe_job(pc)));
    CHECK(ex.queued() == 2);
    CHECK_FALSE(ex.submit(probe_job(pd)));
    CHECK(ex.queued() == 2);

    gate.open();
    REQUIRE(eventually([&] { return pc->runs.load() == 1; }));
    CHECK(pb->runs.load() == 1);
    // The refused job was never taken: not run, not answered (its caller answers EAGAIN).
    CHECK(pd->runs.load() == 0);
    CHECK(pd->fails.load() == 0);
    // Room again.
    auto pe = probe();
    CHECK(ex.submit(probe_job(pe)));
    REQUIRE(eventually([&] { return pe->runs.load() == 1; }));
}

TEST_CASE("VmExecutor::submit refuses after stop", "[fs]") {
    VmExecutor ex("stopped");
    ex.stop(ESHUTDOWN);
    auto p = probe();
    CHECK_FALSE(ex.submit(probe_job(p)));
    std::this_thread::sleep_for(20ms);
    CHECK(p->runs.load() == 0);
    CHECK(p->fails.load() == 0);
    CHECK(ex.queued() == 0);
    ex.stop(ESHUTDOWN);  // a second stop is harmless
}

TEST_CASE("VmExecutor::reap answers overdue and interrupted queued jobs, which never run", "[fs]") {
    VmExecutor ex("reap");
    Gate gate;
    auto pg = probe();
    REQUIRE(ex.submit(gate.job(pg)));
    REQUIRE(gate.wait_started());

    auto now = Clock::now();
    auto p_overdue = probe(), p_intr = probe(), p_ok = probe(), p_last = probe();
    REQUIRE(ex.submit(probe_job(p_overdue, now + 500ms)));
    REQUIRE(ex.submit(probe_job(p_intr, now + 60s)));
    REQUIRE(ex.submit(probe_job(p_ok, now + 60s)));
    REQUIRE(ex.submit(probe_job(p_last, Clock::time_point::max())));
    CHECK(ex.queued() == 4);

    // Nothing is due yet.
    ex.reap(now);
    CHECK(ex.queued() == 4);
    CHECK(p_overdue->fails.load() == 0);

    p_intr->interrupted = true;
    ex.reap(now + 1s);  // p_overdue's deadline has passed by then, p_ok's has not
    CHECK(ex.queued() == 2);
    CHECK(p_overdue->fails.load() == 1);
    CHECK(p_overdue->last_err.load() == ETIMEDOUT);
    CHECK_FALSE(p_overdue->last_ran.load());
    CHECK(p_intr->fails.load() == 1);
    CHECK(p_intr->last_err.load() == EINTR);
    CHECK_FALSE(p_intr->last_ran.load());
    CHECK(p_ok->fails.load() == 0);
    CHECK(p_last->fails.load() == 0);
    // The running gate is not interrupted: untouched.
    CHECK(pg->fails.load() == 0);

    // Reaping again answers nothing twice.
    ex.reap(now + 1s);
    CHECK(p_overdue->fails.load() == 1);
    CHECK(p_intr->fails.load() == 1);

    gate.open();
    REQUIRE(eventually([&] { return p_last->runs.load() == 1; }));
    CHECK(p_ok->runs.load() == 1);
    CHECK(p_overdue->runs.load() == 0);
    CHECK(p_intr->runs.load() == 0);
    CHECK(p_overdue->fails.load() == 1);
    CHECK(p_intr->fails.load() == 1);
    CHECK(pg->runs.load() == 1);
}

TEST_CASE("VmExecutor::reap answers the running job when its caller is interrupted", "[fs]") {
    VmExecutor ex("reap-running");
    Gate gate;
    auto pg = probe();
    std::atomic<int> late_answer{-1};
    std::atomic<int> late_sends{0};
    REQUIRE(ex.submit(
        gate.job(pg, [&](Job& job) { late_answer = job.answer([&] { ++late_sends; }) ? 1 : 0; })));
    REQUIRE(gate.wait_started());

    ex.reap(Clock::now());
    CHECK(pg->fails.load() == 0);  // not interrupted yet

    pg->interrupted = true;
    ex.reap(Clock::now());
    CHECK(pg->fails.load() == 1);
    CHECK(pg->last_err.load() == EINTR);
    CHECK(pg->last_ran.load());   // it was running
    CHECK(pg->runs.load() == 0);  // and still is

    ex.reap(Clock::now());
    CHECK(pg->fails.load() == 1);  // once only

    gate.open();
    REQUIRE(eventually([&] { return pg->runs.load() == 1; }));
    CHECK(late_answer.load() == 0);  // its own answer comes too late
    CHECK(late_sends.load() == 0);
}

TEST_CASE("VmExecutor::stop answers what is queued with its error and joins the worker", "[fs]") {
    auto ex = std::make_unique<VmExecutor>("stop");
    Gate gate;
    auto pg = probe();
    REQUIRE(ex->submit(gate.job(pg)));
    REQUIRE(gate.wait_started());
    auto p1 = probe(), p2 = probe();
    REQUIRE(ex->submit(probe_job(p1)));
    REQUIRE(ex->submit(probe_job(p2)));

    std::atomic<bool> stopped{false};
    std::thread stopper([&] {
        ex->stop(ECANCELED);
        stopped = true;
    });
    // The queued jobs are answered at once...
    CHECK(eventually([&] { return p1->fails.load() == 1 && p2->fails.load() == 1; }));
    CHECK(p1->last_err.load() == ECANCELED);
    CHECK(p2->last_err.load() == ECANCELED);
    CHECK_FALSE(p1->last_ran.load());
    CHECK_FALSE(p2->last_ran.load());
    // ...while stop waits for the running one.
    std::this_thread::sleep_for(50ms);
    CHECK_FALSE(stopped.load());
    CHECK(pg->runs.load() == 0);
    CHECK_FALSE(ex->submit(probe_job(probe())));

    gate.open();
    stopper.join();
    CHECK(stopped.load());
    CHECK(pg->runs.load() == 1);
    CHECK(pg->fails.load() == 0);
    CHECK(p1->runs.load() == 0);
    CHECK(p2->runs.load() == 0);
    CHECK(ex->queued() == 0);
    ex.reset();  // the destructor after stop neither hangs nor answers again
    CHECK(p1->fails.load() == 1);
}

TEST_CASE("VmExecutor's destructor answers queued jobs with ESHUTDOWN", "[fs]") {
    auto p = probe();
    Gate gate;  // declared before the executor: opened explicitly below
    auto ex = std::make_unique<VmExecutor>("dtor");
    auto pg = probe();
    REQUIRE(ex->submit(gate.job(pg)));
    REQUIRE(gate.wait_started());
    REQUIRE(ex->submit(probe_job(p)));
    std::thread destroyer([&] { ex.reset(); });
    bool answered = eventually([&] { return p->fails.load() == 1; });
    gate.open();
    destroyer.join();
    CHECK(answered);
    CHECK(p->last_err.load() == ESHUTDOWN);
    CHECK_FALSE(p->last_ran.load());
    CHECK(p->runs.load() == 0);
    CHECK(pg->runs.load() == 1);  // the running job was finished, not abandoned
}

TEST_CASE("VmExecutor fails a job whose deadline passed before it was dequeued", "[fs]") {
    VmExecutor ex("late");
    SECTION("on an idle worker") {
        auto p = probe();
        REQUIRE(ex.submit(probe_job(p, Clock::now() - 1ms)));
        REQUIRE(eventually([&] { return p->fails.load() == 1; }));
        CHECK(p->last_err.load() == ETIMEDOUT);
        CHECK_FALSE(p->last_ran.load());
        CHECK(p->runs.load() == 0);
        CHECK(p->sends.load() == 0);
    }
    SECTION("behind a slow job, without any reaping") {
        Gate gate;
        auto pg = probe();
        REQUIRE(ex.submit(gate.job(pg)));
        REQUIRE(gate.wait_started());
        auto p = probe(), after = probe();
        REQUIRE(ex.submit(probe_job(p, Clock::now() + 20ms)));
        REQUIRE(ex.submit(probe_job(after)));
        std::this_thread::sleep_for(40ms);
        CHECK(p->fails.load() == 0);  // nobody reaped
        gate.open();
        REQUIRE(eventually([&] { return after->runs.load() == 1; }));
        CHECK(p->fails.load() == 1);
        CHECK(p->last_err.load() == ETIMEDOUT);
        CHECK_FALSE(p->last_ran.load());
        CHECK(p->runs.load() == 0);
    }
    SECTION("an interrupted caller found at dequeue time gets EINTR") {
        Gate gate;
        auto pg = probe();
        REQUIRE(ex.submit(gate.job(pg)));
        REQUIRE(gate.wait_started());
        auto p = probe(), after = probe();
        REQUIRE(ex.submit(probe_job(p)));
        REQUIRE(ex.submit(probe_job(after)));
        p->interrupted = true;
        gate.open();
        REQUIRE(eventually([&] { return after->runs.load() == 1; }));
        CHECK(p->fails.load() == 1);
        CHECK(p->last_err.load() == EINTR);
        CHECK_FALSE(p->last_ran.load());
        CHECK(p->runs.load() == 0);
    }
}

TEST_CASE("VmExecutor: a job answered elsewhere before the worker gets to it is skipped", "[fs]") {
    VmExecutor ex("claimed");
    Gate gate;
    auto pg = probe();
    REQUIRE(ex.submit(gate.job(pg)));
    REQUIRE(gate.wait_started());
    auto p = probe(), after = probe();
    auto job = probe_job(p);
    REQUIRE(ex.submit(job));
    REQUIRE(ex.submit(probe_job(after)));
    REQUIRE(job->claim());  // someone else took it
    gate.open();
    REQUIRE(eventually([&] { return after->runs.load() == 1; }));
    CHECK(p->runs.load() == 0);
    CHECK(p->fails.load() == 0);
}
