// GuestAccess over a QEMU gdbstub.
#pragma once

#include <map>
#include <memory>
#include <optional>

#include "common/deadline.h"
#include "redirector/gdb/gdb_client.h"
#include "redirector/guest/guest_access.h"

namespace cloudvmi {

class GdbstubAccess final : public GuestAccess {
  public:
    static ErrorOr<std::unique_ptr<GdbstubAccess>> attach(const gdb::Endpoint& endpoint,
                                                          gdb::ClientOptions options = {});

    std::string describe() const override;
    std::optional<int> hypervisor_pid() const override { return client_->peer_pid(); }
    ErrorOr<bool> stopped_by_others() override;
    void resumed_by_others() override { client_->assume_running(); }
    bool running() const override { return client_->running(); }
    ErrorOr<void> resume() override;
    void before_next_resume(std::function<void()> note) override {
        before_resume_ = std::move(note);
    }
    ErrorOr<StopEvent> wait_for_stop(Deadline deadline) override;
    ErrorOr<StopEvent> interrupt(Deadline deadline) override;
    ErrorOr<StopEvent> step(VcpuId vcpu, Deadline deadline) override;

    ErrorOr<std::vector<VcpuId>> vcpus() override;
    ErrorOr<RegisterSnapshot> snapshot(VcpuId vcpu) override;
    ErrorOr<void> restore(const RegisterSnapshot& snapshot) override;
    ErrorOr<void> write_regs(VcpuId vcpu, const kvm_regs& regs) override;

    ErrorOr<void> read_virtual(VcpuId vcpu, uint64_t va, std::span<uint8_t> out) override;
    ErrorOr<void> write_virtual(VcpuId vcpu, uint64_t va, std::span<const uint8_t> data) override;
    ErrorOr<void> read_physical(uint64_t pa, std::span<uint8_t> out) override;
    ErrorOr<void> write_physical(uint64_t pa, std::span<const uint8_t> data) override;

    ErrorOr<void> insert_breakpoint(uint64_t va) override;
    ErrorOr<void> remove_breakpoint(uint64_t va) override;
    ErrorOr<void> detach() override;
    RunControlCounters counters() const override;

    gdb::GdbClient& client() { return *client_; }
    void abandon() override { client_->abandon(); }

    // Decodes a raw 'g' register file with the stub's layout (exposed for tests).
    static ErrorOr<VcpuState> decode(const gdb::RegisterLayout& layout,
                                     std::span<const uint8_t> raw);
    // Writes regs' fields into a raw register file.
    static ErrorOr<void> encode_regs(const gdb::RegisterLayout& layout, const kvm_regs& regs,
                                     std::span<uint8_t> raw);

  private:
    RunControlCounters counters_{1, 0};                              // attaching stops the VM
    std::optional<Clock::time_point> stopped_since_ = Clock::now();  // stopped for us, since
    explicit GdbstubAccess(std::unique_ptr<gdb::GdbClient> client) : client_(std::move(client)) {}
    void note_resumed();
    void run_before_resume();
    std::function<void()> before_resume_;
    gdb::ThreadId thread_of(VcpuId vcpu) const;
    StopEvent to_event(const gdb::StopReply& stop) const;
    ErrorOr<void> use_memory_mode(VcpuId vcpu, bool physical);

    std::unique_ptr<gdb::GdbClient> client_;
    // Register files read since the last resume: a stopped vCPU's registers only change
    // through us, so re-reading them would only cost round trips.
    std::map<VcpuId, RegisterSnapshot> cache_;
    bool late_interrupt_ = false;  // an interrupt went unanswered: the next stop is ours
};

}  // namespace cloudvmi
