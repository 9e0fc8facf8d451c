// A real QEMU guest for integration tests, booted once per test process and shared.
//
// The configuration comes from the environment so that one test binary covers every
// kernel flavour and boot option (ctest registers one entry per configuration):
//   CLOUDVMI_TEST_RELEASE  Debian release of the busybox guest's kernel: bullseye (5.10),
//                          bookworm (6.1, default), trixie (6.12), sid (unstable); with
//                          the debian image, the image's release: bookworm or trixie
//   CLOUDVMI_TEST_FLAVOUR  generic (default), cloud, rt
//   CLOUDVMI_TEST_APPEND   extra kernel command line, e.g. "nopti" or "nokaslr"
//   CLOUDVMI_TEST_SMP      vCPU count (default 1)
//   CLOUDVMI_TEST_IMAGE    busybox (default: the initramfs guest) or debian (Debian 12 with
//                          systemd, sshd and qemu-guest-agent; see tests/guest/README.md)
// A missing QEMU, guest kernel or launcher is a test failure, never a skip.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "redirector/guest/gdbstub_access.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"

namespace cloudvmi::test {

struct GuestConfig {
    std::string flavour = "generic";
    std::string release = "bookworm";
    std::string append;
    int smp = 1;
    std::string name = "itest";
    std::string hostname;  // guest host name (default: cloudvmi-guest)
    std::string image = "busybox";
    bool allow_reboot = false;  // a guest reboot restarts it inside the same QEMU
    std::string describe() const;
    static GuestConfig from_environment();
};

struct CommandResult {
    int status = -1;
    std::string out;
    std::string err;
};

class TestGuest {
  public:
    // The shared guest, started on first use (REQUIREs success).
    static TestGuest& shared();

    // Starts another guest (for tests that need two, or a disposable one).
    static TestGuest start(const GuestConfig& config);
    ~TestGuest();
    TestGuest(TestGuest&&) noexcept;
    TestGuest& operator=(TestGuest&&) = delete;
    TestGuest(const TestGuest&) = delete;

    void stop();
    // Stops the guest if it runs and boots it again with the same sockets (a VM that
    // comes back), waiting until it is up.
    void restart();

    const std::string& gdb() const { return gdb_; }
    const std::string& qga() const { return qga_; }
    const std::string& state_dir() const { return state_dir_; }
    const GuestConfig& config() const { return config_; }
    // The booted kernel's release as `uname -r` says it (launch-guest.sh's KERNEL_VERSION).
    const std::string& kernel_version() const { return kernel_version_; }
    int qemu_pid() const { return qemu_pid_; }
    // launch-guest.sh's ACCEL (tcg or kvm) and CPU (the -cpu model it chose).
    const std::string& accel() const { return accel_; }
    const std::string& cpu_model() const { return cpu_model_; }

    std::string serial_log() const;
    // Highest "cloudvmi-heartbeat N" seen on the console (-1 if none).
    long last_heartbeat() const;
    // Waits until the heartbeat passes `beyond` (true) or the timeout expires (false).
    bool wait_heartbeat_beyond(long beyond, int timeout_ms) const;

    // One QMP command ({"execute": NAME}) on the guest's QMP socket; returns the reply line
    // ("" if QMP could not be reached).
    std::string qmp(const std::string& command) const;
    // cloudvmi's own QMP socket (the mount's qmp: key).
    const std::string& vmi_qmp() const { return vmi_qmp_; }
    // QMP query-status's "status" ("running", "paused", ...).
    std::string run_state() const;
    // Polls run_state() until it is `state` or `timeout_ms` passes; whether it got there.
    bool await_run_state(const std::string& state, int timeout_ms) const;

    // Runs a shell command in the guest over ssh (the debian image only).
    CommandResult ssh(const std::string& command, int timeout_ms = 60000) const;

    // Session options pointing at this guest, with the guardian enabled.
    SessionOptions session_options() const;

  private:
    TestGuest() = default;
    void boot();
    void start_watchdog();
    GuestConfig config_;
    std::string run_dir_;
    std::string state_dir_;
    std::string gdb_, qmp_, vmi_qmp_, serial_, qga_, ssh_port_, ssh_key_, kernel_version_, accel_,
        cpu_model_;
    int qemu_pid_ = 0;
    bool running_ = false;
};

// Runs a command, capturing stdout and stderr; returns the exit status (or 128+signal).
CommandResult run_command(const std::vector<std::string>& argv, int timeout_ms = 120000);
// `cat PATH`, again every half second until it succeeds or `timeout_ms` passed (a VM that
// boots, or is being attached to); the last attempt's result.
CommandResult cat_until_ok(const std::string& path, int timeout_ms = 90000);

// Starts a program with stdout and stderr appended to `log`; with `own_group`, in a
// process group of its own (so that a signal to the test's group does not reach it).
pid_t spawn_process(const std::vector<std::string>& argv, const std::string& log = "/dev/null",
                    bool own_group = false);
// One round of the SIGKILL tests: a `cloudvmi guest` job (`info`, or with `long_job` a
// `cat` of kallsyms several times) is SIGKILLed after a random delay of up to
// `max_delay_ms`, counted from its start or, with `after_guest_modified`, from the moment
// its recovery log first says the guest holds something of ours (so that the kill lands
// where there is something to repair, whatever the speed of the engine); then a new
// session runs `cat /proc/uptime`.
struct KillRound {
    bool long_job = false;
    bool after_guest_modified = false;
    int max_delay_ms = 0;
    int attach_timeout_ms = 60000;
};
struct KillOutcome {
    int killed_after_ms = 0;  // from the start, or from the first modification
    // The recovery log was dirty once the job was dead: a guardian, or the next attach,
    // owes the guest a repair (false also when a guardian was quicker than our look).
    bool left_guest_modified = false;
    CommandResult next_attach;
};
KillOutcome kill_mid_session_then_attach(const TestGuest& guest, const KillRound& round,
                                         std::mt19937& rng);
// Whether a session recovery log in `state_dir` says the guest holds something of ours.
bool recovery_log_dirty(const std::string& state_dir);
// Host processes (ours excluded) whose command line, arguments joined by spaces,
// contains `needle`.
std::vector<pid_t> processes_with(const std::string& needle);
// Host pids of the guardians (`cloudvmi guard`) keeping logs in `state_dir`.
std::vector<pid_t> guardians_of(const std::string& state_dir);
// Waits up to `timeout_ms` for those guardians to finish; whether none is left.
bool await_guardians_gone(const std::string& state_dir, int timeout_ms);
// A direct connection to the guest's gdbstub (the VM stopped), for tests below the
// session; REQUIREs success.
std::unique_ptr<GdbstubAccess> attach_stub(const TestGuest& guest);
// A program's path from PATH (and the sbin directories); "" if there is none.
std::string find_in_path(const std::string& prog);
// A whole host file ("" if it cannot be read).
std::string read_whole_file(const std::string& path);
// `s` without trailing newlines and spaces.
std::string trimmed(std::string s);

// The cloudvmi binary under test.
std::string cloudvmi_binary();
// Repository root (for the guest kit).
std::string source_dir();
// A new directory /tmp/PREFIX-XXXXXX; REQUIREs that it could be made.
std::string make_temp_dir(const std::string& prefix);

// --- reading a guest through a test's own session ---
std::string text(const std::vector<uint8_t>& bytes);
// A whole guest file; REQUIREs that it can be read.
std::string read_text(GuestFileOps& ops, const std::string& path);
// The pid the guest workload `name` (heartbeat, user, blocked, container) wrote to
// /run/workload/NAME.pid; REQUIREs a number there.
int64_t workload_pid(GuestFileOps& ops, const std::string& name);
// The value of the first "Key: value" line ("" if none), the form of /proc/PID/status and
// of the files under .cloudvmi.
std::string field_value(const std::string& text, const std::string& key);
// The pid directories of a /proc listing.
std::vector<int64_t> numeric_entries(const std::vector<GuestDirEntry>& entries);
// The guest's processes whose comm is `name`, from a fresh listing of /proc.
std::vector<int64_t> processes_named(GuestFileOps& ops, const std::string& name);

// The cloudvmi-shadow processes in a guest besides a checking session's own (attached with
// `state_dir`), once they stop changing (a detaching shadow takes a moment to exit).
std::vector<int64_t> foreign_shadows(const TestGuest& guest, const std::string& state_dir);
// fusermount3 -u, then waits up to a minute for the daemon to exit (SIGKILL after that);
// false if it had to be killed.
bool unmount_and_reap(const std::string& mountpoint, pid_t daemon);

// Checks the prerequisites of guest tests and fails loudly if one is missing.
void require_guest_prerequisites();

}  // namespace cloudvmi::test
