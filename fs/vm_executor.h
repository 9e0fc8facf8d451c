// One queue and one worker thread per VM: a slow or dead VM only delays its own requests.
//
// FUSE worker threads hand each guest-touching request to the VM's queue and return at
// once; the worker replies when done (libfuse allows deferred replies from any thread).
// A request is answered exactly once: either by the worker that claimed it, or, while it
// is still queued, by the reaper when its deadline passes or the caller was interrupted.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/deadline.h"

namespace cloudvmi::fs {

class Job {
public:
    Job(std::function<void()> run, std::function<void(int err)> fail,
        std::function<bool()> interrupted, Clock::time_point deadline)
        : run_(std::move(run)), fail_(std::move(fail)), interrupted_(std::move(interrupted)),
          deadline_(deadline) {}

    // True for exactly one caller: the one that must answer the request.
    bool claim() { return !claimed_.exchange(true); }
    void run() { run_(); }
    void fail(int err) { fail_(err); }
    bool interrupted() const { return interrupted_ && interrupted_(); }
    Clock::time_point deadline() const { return deadline_; }

private:
    std::function<void()> run_;
    std::function<void(int)> fail_;
    std::function<bool()> interrupted_;
    Clock::time_point deadline_;
    std::atomic<bool> claimed_{false};
};

class VmExecutor {
public:
    explicit VmExecutor(std::string name, size_t max_queue = 512);
    ~VmExecutor();
    VmExecutor(const VmExecutor&) = delete;
    VmExecutor& operator=(const VmExecutor&) = delete;

    // False when the queue is full (the caller answers EAGAIN).
    bool submit(std::shared_ptr<Job> job);
    // Answers queued jobs that are overdue (ETIMEDOUT) or interrupted (EINTR).
    void reap(Clock::time_point now);
    // Runs `f` on the worker and waits for it (shutdown work that must be serialised).
    void run_sync(const std::function<void()>& f);
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
    bool stopping_ = false;
    std::thread worker_;
};

}  // namespace cloudvmi::fs
