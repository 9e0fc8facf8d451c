// The VM's run state over a QMP socket of its QEMU (a monitor of cloudvmi's own: QEMU
// serves one client per QMP socket, so the owner's tools keep theirs).
//
// query-status is asked once at connect; afterwards the state is cached and asked again
// only after an event that may change it (STOP, RESUME, ...). With no event pending,
// current() costs one poll() on the socket, so it can be asked before every batch.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "common/unique_fd.h"
#include "redirector/guest/qmp_message.h"
#include "redirector/guest/vm_run_state.h"

namespace cloudvmi {

class QmpMonitor : public VmRunStateSource {
  public:
    // `address`: a unix socket path, "unix:PATH" or "tcp:HOST:PORT". Reads the greeting
    // and enters command mode before `deadline`.
    static ErrorOr<std::unique_ptr<QmpMonitor>> connect(const std::string& address,
                                                        Deadline deadline);

    std::string describe() const override { return "qmp:" + address_; }
    ErrorOr<VmRunState> current(Deadline deadline) override;

  private:
    QmpMonitor(UniqueFd fd, std::string address)
        : fd_(std::move(fd)), address_(std::move(address)) {}

    ErrorOr<void> send_command(const char* name, Deadline deadline);
    // The next reply to a command; events met on the way are noted.
    ErrorOr<QmpMessage> next_reply(Deadline deadline);
    // The next message; nullopt if none is complete by `deadline` (a zero-wait poll when
    // the deadline has passed).
    ErrorOr<std::optional<QmpMessage>> next_message(Deadline deadline);
    // Consumes the events already received, without waiting.
    ErrorOr<void> drain_events();
    ErrorOr<VmRunState> query_status(Deadline deadline);
    void note_event(const QmpMessage& m);

    UniqueFd fd_;
    std::string address_;
    std::string buffer_;  // bytes received, not yet a whole line
    VmRunState state_;
    bool stale_ = true;  // an event came since the last query-status
};

}  // namespace cloudvmi
