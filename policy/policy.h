// The write policy: which changes (and, where asked, which reads) a host caller may make
// to which guest path of which VM. Pure: no I/O, no clock of its own, no host lookups
// (user and group names are resolved by the loader through a NameResolver).
//
// Decision: the rules are tried in file order and the FIRST rule that matches the request
// decides (like a firewall); when none matches, `defaults` decides. A matching `allow`
// rule whose constraints the request fails, or whose rate limit is used up, denies: a
// later rule is not tried (a constraint narrows its rule, it does not fall through).
//
// The schema is documented in man/cloudvmi-policy.5.rst.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace cloudvmi::policy {

enum class Operation {
    kRead,
    kWrite,
    kCreate,
    kTruncate,
    kUnlink,
    kMkdir,
    kRmdir,
    kRename,
    kChmod,
    kChown,
    kSymlink,
    kSetxattr,
    kKill,
};

std::string_view operation_name(Operation op);
std::optional<Operation> parse_operation(std::string_view name);
// Every operation but kRead.
bool is_change(Operation op);

// The host user asking (the FUSE caller).
struct Caller {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary
};

// One operation asked for on one guest path.
struct Request {
    std::string node;
    std::string vm;
    Operation op = Operation::kRead;
    // The guest path the operation touches: absolute, normalised (see normalize_path()).
    // For rename, one request per end (the source and the destination) is decided. For
    // kill: "/proc/PID" of the target process.
    std::string path;
    Caller caller;
    // write: the bytes of this write call; symlink: the link's target; chmod: the mode in
    // octal ("0644"); chown: "UID:GID"; setxattr: the attribute's name; otherwise empty.
    std::string value;
    // write: where this write call starts; a rule with value constraints (regex, range,
    // values) allows only writes at offset 0.
    uint64_t offset = 0;
    // write/truncate: the file's size once the change is made (offset + bytes, or the new
    // size); create: 0.
    uint64_t size = 0;
    // kill only.
    int signal = 0;
    std::string target_name;  // the process's comm
    std::optional<uid_t> target_uid;
};

struct Decision {
    bool allowed = false;
    int error = 0;       // when denied: EACCES, or EAGAIN when a rate limit is used up
    std::string rule;    // the deciding rule's id, or "defaults"
    std::string reason;  // one line, for the audit log and `policy explain`
    bool audit = false;  // audit this request (every change; reads where a rule asks)
};

// Resolves user and group names for the loader; numbers are taken as they are.
struct NameResolver {
    std::function<std::optional<uid_t>(const std::string&)> user;
    std::function<std::optional<gid_t>(const std::string&)> group;
    // getpwnam_r / getgrnam_r.
    static NameResolver system();
};

// Absolute, without empty, "." components or a trailing slash. A ".." component, a NUL
// or a relative path: EINVAL (paths are never resolved here).
ErrorOr<std::string> normalize_path(std::string_view path);

// Glob matching of a normalised path: `*` any run of characters within one component, `?`
// one character other than '/', `[abc]`/`[a-z]`/`[!x]` one character of a class, `**` as a
// whole component any number (zero included) of components. Exposed for the tests.
bool glob_match(std::string_view pattern, std::string_view path);
// The same for node and VM names (no '/': `*`, `?` and classes only).
bool name_match(std::string_view pattern, std::string_view name);

class Policy {
  public:
    // Errors are EINVAL with "ORIGIN:LINE:COLUMN: what" (unknown keys included).
    static ErrorOr<std::shared_ptr<Policy>> parse(const std::string& yaml_text,
                                                  const std::string& origin,
                                                  const NameResolver& names);
    static ErrorOr<std::shared_ptr<Policy>> load_file(const std::string& path,
                                                      const NameResolver& names);
    // What applies without a policy file: reads allowed (to whoever the mount admits),
    // every change denied.
    static std::shared_ptr<Policy> builtin_default();

    // Decides, and counts an allowed request against its rule's rate limit. Thread-safe.
    Decision decide(const Request& request, std::chrono::steady_clock::time_point now);
    // The same without touching the rate limits (`cloudvmi policy explain`).
    Decision explain(const Request& request) const;
    // Whether some request like this one could be allowed: the first matching rule allows
    // (its constraints and rate limit not applied), or none matches and the defaults
    // allow. A file opened for writing where no write can ever be allowed is refused at
    // the open.
    bool may_allow(const Request& request) const;

    const std::string& origin() const;
    size_t rule_count() const;

    // Opaque; defined in policy.cc.
    struct Rule;
    struct Defaults;
    ~Policy();
    Policy();

  private:
    friend class PolicyLoader;
    Decision evaluate(const Request& request,
                      std::optional<std::chrono::steady_clock::time_point> now);
    // Counts an allowed request against the rule's rate limit (only with `now`); false if
    // it is used up.
    bool take_rate(Rule& rule, const Request& request,
                   std::optional<std::chrono::steady_clock::time_point> now);
    std::string origin_;
    std::vector<Rule> rules_;
    std::unique_ptr<Defaults> defaults_;
    std::mutex rate_mutex_;  // guards every rule's rate window; a leaf lock
};

}  // namespace cloudvmi::policy
