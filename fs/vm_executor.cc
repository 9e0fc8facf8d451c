#include "fs/vm_executor.h"

#include <algorithm>
#include <cerrno>

#include "common/log.h"

namespace cloudvmi::fs {

VmExecutor::VmExecutor(std::string name, size_t max_queue, size_t workers)
    : name_(std::move(name)), max_queue_(max_queue) {
    for (size_t i = 0; i < std::max<size_t>(workers, 1); ++i)
        workers_.emplace_back([this] { worker_main(); });
}

VmExecutor::~VmExecutor() {
    stop(ESHUTDOWN);
}

bool VmExecutor::submit(std::shared_ptr<Job> job) {
    {
        std::lock_guard lock(mutex_);
        if (stopping_ || queue_.size() >= max_queue_) return false;
        queue_.push_back(std::move(job));
    }
    cv_.notify_one();
    return true;
}

size_t VmExecutor::queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
}

void VmExecutor::worker_main() {
    while (true) {
        std::shared_ptr<Job> job;
        {
            std::unique_lock lock(mutex_);
            cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (queue_.empty()) return;  // stopping and drained
            job = std::move(queue_.front());
            queue_.pop_front();
        }
        if (!job->claim()) continue;  // already answered by the reaper
        if (int err = job->expiry_error(Clock::now()); err != 0) {
            job->fail(err);
            continue;
        }
        {
            std::lock_guard lock(mutex_);
            running_.push_back(job);
        }
        job->run();
        std::lock_guard lock(mutex_);
        std::erase(running_, job);
    }
}

void VmExecutor::reap(Clock::time_point now) {
    std::vector<std::shared_ptr<Job>> expired;
    std::vector<std::shared_ptr<Job>> running;
    {
        std::lock_guard lock(mutex_);
        running = running_;
        for (auto it = queue_.begin(); it != queue_.end();) {
            if ((*it)->expiry_error(now) != 0) {
                expired.push_back(std::move(*it));
                it = queue_.erase(it);
            } else {
                ++it;
            }
        }
    }
    // A caller interrupted while its request is in the guest gets its answer now; the
    // guest operation finishes in the background (within its own bounds).
    for (auto& job : running) {
        if (job->answer_if_interrupted())
            LOG_DEBUG("%s: running request interrupted", name_.c_str());
    }
    for (auto& job : expired) {
        if (!job->claim()) continue;
        int err = job->expiry_error(now);  // an interrupt or a passed deadline stays so
        LOG_DEBUG("%s: request %s while queued", name_.c_str(),
                  err == EINTR ? "interrupted" : "timed out");
        job->fail(err);
    }
}

void VmExecutor::stop(int err) {
    std::lock_guard join_lock(join_mutex_);
    std::deque<std::shared_ptr<Job>> left;
    {
        std::lock_guard lock(mutex_);
        if (stopping_ && workers_.empty()) return;
        stopping_ = true;
        left.swap(queue_);
    }
    cv_.notify_all();
    for (auto& job : left) {
        if (job->claim()) job->fail(err);
    }
    for (auto& worker : workers_) {
        if (worker.get_id() == std::this_thread::get_id()) {
            worker.detach();  // stopped from one of its own requests: it ends by itself
        } else if (worker.joinable()) {
            worker.join();
        }
    }
    workers_.clear();
}

}  // namespace cloudvmi::fs
