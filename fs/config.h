// The mount's configuration file (YAML, /etc/cloudvmi/cloudvmi.yaml by default).
//
//   node: node1                  # name of this host in /vmi (default: the host name)
//   state_dir: /run/cloudvmi     # recovery logs and locks
//   request_timeout_ms: 5000     # bound for one request to a VM once attached
//   attach_timeout_ms: 20000     # bound for attaching (finding a thread, starting the shadow)
//   engine: mailbox              # or trap: how batches reach the shadow (see cloudvmi(1))
//   operators_group: vmiops      # may read the guests besides root (default: root only)
//   allow_consuming_reads: false # /proc/kmsg, trace_pipe: reading them takes from the guest
//   policy: /etc/cloudvmi/policy.yaml   # what may change in the guests (cloudvmi-policy(5));
//                                # the default file if it exists, else the built-in policy
//   audit:                       # the audit trail of changes
//     file: /var/log/cloudvmi/audit.log   # "" for none (syslog only)
//     max_bytes: 67108864        # rotated beyond this size
//     keep: 5                    # rotated files kept
//     syslog: true               # a copy of every line to syslog (LOG_AUTHPRIV)
//   cache:                       # kernel attribute/entry cache lifetimes, seconds
//     proc_attr: 0.5
//     proc_entry: 1
//     root_attr: 1
//     root_entry: 1
//   nodes:                       # libvirt connections: their running domains are the
//     - name: lab                #   VMs of /vmi/lab/, kept current by libvirt's events
//       uri: qemu:///system      #   (a domain's gdbstub: -gdb on its qemu:commandline,
//       gdb_dir: /var/lib/libvirt/qemu  # else one opened on demand, listening in here)
//     - name: far                #   a node on another host, served there by
//       ssh: root@far.example    #   `ssh [ssh_options] HOST remote_command`
//       ssh_options: [-i, /etc/cloudvmi/id_ed25519]
//       remote_command: cloudvmi serve --stdio
//   vms:                         # VMs listed by hand, under /vmi/<node>/
//     - name: web-01
//       gdb: unix:/run/web-01.gdb
//       qmp: /run/web-01.vmi.qmp   # optional, cloudvmi's own QMP socket: a VM paused by
//                                  # others is then never attached to nor resumed
//
// Errors name the file, the line and what is wrong; nothing is half-loaded.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

namespace cloudvmi::fs {

struct VmConfig {
    std::string name;
    std::string gdb;  // gdbstub endpoint
    std::string qmp;  // optional: cloudvmi's own QMP socket of the VM (path or unix:/tcp:)
};

struct NodeConfig {
    std::string name;  // its directory in /vmi
    std::string uri;   // libvirt connection URI (or a uri_aliases name)
    // Where a gdbstub opened on demand listens (domains whose XML declares none): a
    // directory QEMU's user may write in.
    std::string gdb_dir = "/var/lib/libvirt/qemu";
    // A node on another host (instead of `uri`): its tree is served there by
    // `ssh [ssh_options] ssh remote_command`, i.e. `cloudvmi serve --stdio`.
    std::string ssh;
    std::vector<std::string> ssh_options;
    std::string remote_command = "cloudvmi serve --stdio";
    bool remote() const { return !ssh.empty(); }
};

struct CacheConfig {
    double proc_attr = 0.5;  // proc/ and sys/: live data, near zero
    double proc_entry = 1.0;
    double root_attr = 1.0;  // root/: ordinary files
    double root_entry = 1.0;
};

struct AuditConfig {
    std::string file = "/var/log/cloudvmi/audit.log";
    uint64_t max_bytes = 64u << 20;
    int keep = 5;
    bool syslog = true;
};

struct Config {
    std::string node;
    std::string state_dir;
    long request_timeout_ms = 5000;
    long attach_timeout_ms = 20000;
    std::string engine = "mailbox";
    std::string operators_group;  // a group name or number; "" = host root only
    // operators_group resolved by the mount command (the parser does not look at the host).
    std::optional<gid_t> operators_gid;
    // Reads that take data from the guest (/proc/kmsg, tracing pipes); refused by default.
    bool allow_consuming_reads = false;
    CacheConfig cache;
    // The policy file; unset: kDefaultPolicyPath when it exists, else the built-in policy.
    std::optional<std::string> policy;
    AuditConfig audit;
    std::vector<VmConfig> vms;      // hand-listed, under /vmi/<node>/
    std::vector<NodeConfig> nodes;  // libvirt nodes, each under /vmi/<name>/

    static ErrorOr<Config> load_file(const std::string& path);
    static ErrorOr<Config> parse(const std::string& yaml_text, const std::string& origin);
};

// The default configuration file.
constexpr const char* kDefaultConfigPath = "/etc/cloudvmi/cloudvmi.yaml";
constexpr const char* kDefaultPolicyPath = "/etc/cloudvmi/policy.yaml";

// A name usable as one directory entry of /vmi (node and VM names).
bool is_valid_entry_name(const std::string& name);

}  // namespace cloudvmi::fs
