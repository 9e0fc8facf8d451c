#include "fs/policy_store.h"

#include "common/log.h"
#include "common/strings.h"

namespace cloudvmi::fs {

namespace {

std::string clock_text(std::chrono::system_clock::time_point t) {
    std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

}  // namespace

PolicyStore::PolicyStore(std::string path)
    : path_(std::move(path)), policy_(policy::Policy::builtin_default()) {}

ErrorOr<void> PolicyStore::load() {
    std::shared_ptr<policy::Policy> loaded = policy::Policy::builtin_default();
    if (!path_.empty())
        loaded = TRY(policy::Policy::load_file(path_, policy::NameResolver::system()));
    std::lock_guard lock(mutex_);
    policy_ = std::move(loaded);
    loaded_at_ = std::chrono::system_clock::now();
    return {};
}

bool PolicyStore::reload() {
    auto loaded = path_.empty()
                      ? ErrorOr<std::shared_ptr<policy::Policy>>(policy::Policy::builtin_default())
                      : policy::Policy::load_file(path_, policy::NameResolver::system());
    std::lock_guard lock(mutex_);
    ++reloads_;
    if (!loaded) {
        ++failures_;
        last_error_ = loaded.error().describe();
        LOG_WARN("policy reload failed, the policy in force stays: %s", last_error_.c_str());
        return false;
    }
    policy_ = std::move(*loaded);
    loaded_at_ = std::chrono::system_clock::now();
    last_error_.clear();
    LOG_INFO("policy reloaded from %s (%zu rules)", policy_->origin().c_str(),
             policy_->rule_count());
    return true;
}

std::shared_ptr<policy::Policy> PolicyStore::current() const {
    std::lock_guard lock(mutex_);
    return policy_;
}

std::string PolicyStore::status_text() const {
    std::lock_guard lock(mutex_);
    std::string s = strformat("policy: %s (%zu rules)\nloaded: %s\nreloads: %u (%u failed)\n",
                              policy_->origin().c_str(), policy_->rule_count(),
                              clock_text(loaded_at_).c_str(), reloads_, failures_);
    s += last_error_.empty()
             ? "last reload: ok\n"
             : "last reload: FAILED, the policy above stays in force: " + last_error_ + "\n";
    return s;
}

}  // namespace cloudvmi::fs
