// One queue and one worker thread per VM: a slow or dead VM only delays its own requests.
// A remote node's queue has several workers (its requests wait on the network, not on a
// guest, and many may be in flight at once).
//
// FUSE worker threads hand each guest-touching request to the VM's queue and return at
// once; the worker replies when done (libfuse allows deferred replies from any thread).
// A request is answered exactly once: either by the worker that claimed it, or, while it
// is still queued, by the reaper when its deadline passes or the caller was interrupted.
#pragma once

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/deadline.h"

namespace cloudvmi::fs {

class Job {
  public:
    using Send = std::function<void()>;

    // `fail(err, ran)` answers with an error; `ran` tells whether the request was executed
    // (it still runs, interrupted) or dropped before it ran.
    Job(std::function<void(Job&)> run, std::function<void(int err, bool ran)> fail,
        std::function<bool()> interrupted, Clock::time_point deadline)
        : run_(std::move(run)),
          fail_(std::move(fail)),
          interrupted_(std::move(interrupted)),
          deadline_(deadline) {}

    // True for exactly one caller: the one that runs the request (or drops it).
    bool claim() { return !claimed_.exchange(true); }
    void run() { run_(*this); }
    Clock::time_point deadline() const { return deadline_; }
    bool interrupted() const { return interrupted_ && interrupted_(); }
    // Why a request that has not run must not run any more: EINTR when its caller was
    // interrupted, ETIMEDOUT past its deadline; 0 while it may still run.
    int expiry_error(Clock::time_point now) const {
        if (interrupted()) return EINTR;
        if (now > deadline_) return ETIMEDOUT;
        return 0;
    }

    // Sends the reply unless one was sent already (a running request can be answered early
    // when its caller is interrupted); returns whether `send` ran.
    bool answer(const Send& send) {
        std::lock_guard lock(reply_mutex_);
        if (replied_) return false;
        replied_ = true;
        send();
        return true;
    }
    // Answers with `err` (the request is not run).
    void fail(int err) {
        std::lock_guard lock(reply_mutex_);
        if (replied_) return;
        replied_ = true;
        fail_(err, false);
    }
    // For a request still running: answers EINTR if its caller was interrupted meanwhile.
    // The check happens under the reply lock, while the request is still unanswered.
    bool answer_if_interrupted() {
        std::lock_guard lock(reply_mutex_);
        if (replied_ || !interrupted()) return false;
        replied_ = true;
        fail_(EINTR, true);
        return true;
    }

  private:
    std::function<void(Job&)> run_;
    std::function<void(int, bool)> fail_;
    std::function<bool()> interrupted_;
    Clock::time_point deadline_;
    std::atomic<bool> claimed_{false};
    std::mutex reply_mutex_;  // serialises replies; a leaf lock
    bool replied_ = false;
};

class VmExecutor {
  public:
    explicit VmExecutor(std::string name, size_t max_queue = 512, size_t workers = 1);
    ~VmExecutor();
    VmExecutor(const VmExecutor&) = delete;
    VmExecutor& operator=(const VmExecutor&) = delete;

    // False when the queue is full (the caller answers EAGAIN).
    bool submit(std::shared_ptr<Job> job);
    // Answers queued jobs that are overdue (ETIMEDOUT) or interrupted (EINTR).
    void reap(Clock::time_point now);
    // Answers everything still queued with `err` and stops the worker.
    void stop(int err);
    size_t queued() const;

  private:
    void worker_main();

    std::string name_;
    size_t max_queue_;
    mutable std::mutex mutex_;  // guards queue_ and stopping_; a leaf lock
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::vector<std::shared_ptr<Job>> running_;  // the requests the workers are executing
    bool stopping_ = false;
    std::mutex join_mutex_;  // one stop() joins the workers at a time; taken before mutex_
    std::vector<std::thread> workers_;
};

}  // namespace cloudvmi::fs
