// The GDB remote-protocol commands CloudVMI uses, against QEMU's gdbstub.
//
// Facts this class is built around (QEMU 7.2, see DESIGN.md):
//  - connecting stops the VM, and the stub may send an unsolicited stop reply before
//    answering anything: the handshake drains it so replies never shift by one;
//  - a byte received while the VM runs only stops it, so no packet may be sent while the
//    target runs: interrupt first, wait for the stop reply, then talk;
//  - 'p'/'P' answer empty until the target description has been read;
//  - physical-memory mode is global to the stub and survives clients: reset it on attach.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/deadline.h"
#include "common/error.h"
#include "redirector/gdb/rsp_codec.h"
#include "redirector/gdb/rsp_connection.h"
#include "redirector/gdb/target_description.h"

namespace cloudvmi::gdb {

struct ClientOptions {
    Millis connect_timeout{3000};
    Millis request_timeout{3000};
};

class GdbClient {
  public:
    // Connects and performs the handshake; the target is stopped afterwards.
    static ErrorOr<std::unique_ptr<GdbClient>> connect(const Endpoint& endpoint,
                                                       ClientOptions options = {});

    // One command, one reply (the target must be stopped).
    ErrorOr<std::string> request(std::string_view payload);
    // Same, but an "Exx" reply becomes an error naming the command.
    ErrorOr<std::string> request_ok(std::string_view payload, const char* what);

    bool multiprocess() const { return multiprocess_; }
    const RegisterLayout& layout() const { return layout_; }
    bool running() const { return running_; }
    const Endpoint& endpoint() const { return conn_->endpoint(); }
    const ClientOptions& options() const { return options_; }

    ErrorOr<std::vector<ThreadId>> threads();
    // Thread the stub reports with '?' and the 'g' thread after the last stop.
    ThreadId current_thread() const { return g_thread_; }
    ErrorOr<void> select_thread(ThreadId thread);  // Hg (registers and memory)

    ErrorOr<std::vector<uint8_t>> read_registers();  // 'g' of the selected thread
    ErrorOr<void> write_registers(std::span<const uint8_t> raw);

    // Virtual memory through the selected thread's page tables, unless physical mode is on.
    ErrorOr<void> read_memory(uint64_t addr, std::span<uint8_t> out);
    ErrorOr<void> write_memory(uint64_t addr, std::span<const uint8_t> data);
    ErrorOr<void> set_physical_mode(bool on);
    bool physical_mode() const { return physical_mode_; }

    // type 0 = software, 1 = hardware execution breakpoint
    ErrorOr<void> insert_breakpoint(int type, uint64_t addr);
    ErrorOr<void> remove_breakpoint(int type, uint64_t addr);

    // Resumes every vCPU; no reply until the next stop.
    ErrorOr<void> resume();
    // Steps one instruction on one vCPU while the others stay stopped.
    ErrorOr<void> step(ThreadId thread);
    // Waits for the stop reply that follows resume/step.
    ErrorOr<StopReply> wait_for_stop(Deadline deadline);
    // Stops a running target and returns its stop reply.
    ErrorOr<StopReply> interrupt(Deadline deadline);
    // While the target runs: a stop reply that arrived without our asking (the VM was
    // paused by someone else: QEMU tells its debugger), or nullopt. Never sends anything.
    ErrorOr<std::optional<StopReply>> poll_stop();
    // The target was seen running again after a stop that was not ours (its owner resumed
    // it): from now on it is treated as running (interrupt before talking).
    void assume_running() { running_ = true; }
    // The process serving the stub (QEMU), when it is local.
    std::optional<int> peer_pid() const { return conn_->peer_pid(); }

    // Removes every breakpoint on every vCPU, including ones a dead client left. QEMU 7.2
    // inserts a breakpoint on all vCPUs but its '?' clears only the current one and 'z'
    // stops at the first vCPU without it, so stale ones on other vCPUs would stay.
    ErrorOr<void> clear_all_breakpoints();

    // HMP command through the stub's monitor (qRcmd); returns its console output.
    ErrorOr<std::string> monitor(std::string_view command);

    // Removes all breakpoints and resumes the VM ("D;pid"), then closes the connection.
    ErrorOr<void> detach();
    // Closes without detaching (what a crash would do; tests use it).
    void abandon() { conn_->close(); }

    size_t max_memory_chunk() const { return max_memory_chunk_; }

  private:
    GdbClient(std::unique_ptr<RspConnection> conn, ClientOptions options)
        : conn_(std::move(conn)), options_(options) {}

    ErrorOr<void> handshake();
    Deadline request_deadline() const { return Deadline::after(options_.request_timeout); }
    ErrorOr<void> require_stopped(const char* what) const;
    void note_stop(const StopReply& stop);

    std::unique_ptr<RspConnection> conn_;
    ClientOptions options_;
    RegisterLayout layout_;
    bool multiprocess_ = false;
    bool running_ = false;
    bool physical_mode_ = false;
    ThreadId g_thread_;
    size_t max_memory_chunk_ = 1024;
};

// Maps a stub's "Exx" reply to an errno (E14 is the guest page fault QEMU reports).
int stub_error_to_errno(std::string_view reply);

}  // namespace cloudvmi::gdb
