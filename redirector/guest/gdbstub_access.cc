#include "redirector/guest/gdbstub_access.h"

#include <cstring>
#include <utility>

#include "common/strings.h"

namespace cloudvmi {

namespace {

// Where each kvm_regs field lives in the stub's register file, by target-description name.
struct GprField {
    const char* name;
    __u64 kvm_regs::*field;
};
constexpr GprField kGprFields[] = {
    {"rax", &kvm_regs::rax}, {"rbx", &kvm_regs::rbx}, {"rcx", &kvm_regs::rcx},
    {"rdx", &kvm_regs::rdx}, {"rsi", &kvm_regs::rsi}, {"rdi", &kvm_regs::rdi},
    {"rbp", &kvm_regs::rbp}, {"rsp", &kvm_regs::rsp}, {"r8", &kvm_regs::r8},
    {"r9", &kvm_regs::r9},   {"r10", &kvm_regs::r10}, {"r11", &kvm_regs::r11},
    {"r12", &kvm_regs::r12}, {"r13", &kvm_regs::r13}, {"r14", &kvm_regs::r14},
    {"r15", &kvm_regs::r15}, {"rip", &kvm_regs::rip}, {"eflags", &kvm_regs::rflags},
};

struct SegmentField {
    const char* name;
    kvm_segment kvm_sregs::*field;
};
constexpr SegmentField kSegmentFields[] = {
    {"cs", &kvm_sregs::cs}, {"ss", &kvm_sregs::ss}, {"ds", &kvm_sregs::ds},
    {"es", &kvm_sregs::es}, {"fs", &kvm_sregs::fs}, {"gs", &kvm_sregs::gs},
};

struct ControlField {
    const char* name;
    __u64 kvm_sregs::*field;
};
constexpr ControlField kControlFields[] = {
    {"cr0", &kvm_sregs::cr0}, {"cr2", &kvm_sregs::cr2}, {"cr3", &kvm_sregs::cr3},
    {"cr4", &kvm_sregs::cr4}, {"cr8", &kvm_sregs::cr8}, {"efer", &kvm_sregs::efer},
};

uint64_t load_le(std::span<const uint8_t> raw, const gdb::RegisterInfo& r) {
    uint64_t v = 0;
    std::memcpy(&v, raw.data() + r.offset, std::min<size_t>(r.bytes, 8));
    return v;
}

void store_le(std::span<uint8_t> raw, const gdb::RegisterInfo& r, uint64_t v) {
    std::memcpy(raw.data() + r.offset, &v, std::min<size_t>(r.bytes, 8));
}

}  // namespace

ErrorOr<VcpuState> GdbstubAccess::decode(const gdb::RegisterLayout& layout,
                                         std::span<const uint8_t> raw) {
    VcpuState s;
    auto get = [&](const char* name, bool required) -> ErrorOr<std::optional<uint64_t>> {
        const auto* r = layout.find(name);
        if (r == nullptr) {
            if (required) return make_error(EPROTO, strformat("stub lacks register %s", name));
            return std::optional<uint64_t>();
        }
        if (r->offset + r->bytes > raw.size()) {
            return make_error(EPROTO, strformat("register %s beyond the register file", name));
        }
        return std::optional<uint64_t>(load_le(raw, *r));
    };
    for (const auto& f : kGprFields)
        s.regs.*f.field = *TRY(get(f.name, true));
    for (const auto& f : kSegmentFields) {
        s.sregs.*f.field = kvm_segment{};
        (s.sregs.*f.field).selector = static_cast<__u16>(*TRY(get(f.name, true)));
    }
    if (auto v = TRY(get("fs_base", false))) s.sregs.fs.base = *v;
    if (auto v = TRY(get("gs_base", false))) s.sregs.gs.base = *v;
    if (auto v = TRY(get("k_gs_base", false))) s.kernel_gs_base = *v;
    for (const auto& f : kControlFields) {
        if (auto v = TRY(get(f.name, std::strcmp(f.name, "cr3") == 0))) s.sregs.*f.field = *v;
    }
    return s;
}

ErrorOr<void> GdbstubAccess::encode_regs(const gdb::RegisterLayout& layout, const kvm_regs& regs,
                                         std::span<uint8_t> raw) {
    for (const auto& f : kGprFields) {
        const auto* r = layout.find(f.name);
        if (r == nullptr || r->offset + r->bytes > raw.size()) {
            return make_error(EPROTO, strformat("cannot place register %s", f.name));
        }
        store_le(raw, *r, regs.*f.field);
    }
    return {};
}

ErrorOr<std::unique_ptr<GdbstubAccess>> GdbstubAccess::attach(const gdb::Endpoint& endpoint,
                                                              gdb::ClientOptions options) {
    auto client = TRY(gdb::GdbClient::connect(endpoint, options));
    return std::unique_ptr<GdbstubAccess>(new GdbstubAccess(std::move(client)));
}

std::string GdbstubAccess::describe() const {
    return client_->endpoint().to_string();
}

gdb::ThreadId GdbstubAccess::thread_of(VcpuId vcpu) const {
    gdb::ThreadId t;
    t.pid = client_->multiprocess() ? std::max<int64_t>(client_->current_thread().pid, 1) : -1;
    t.tid = vcpu;
    return t;
}

StopEvent GdbstubAccess::to_event(const gdb::StopReply& stop) const {
    StopEvent e;
    e.vcpu = stop.thread ? static_cast<VcpuId>(stop.thread->tid)
                         : static_cast<VcpuId>(client_->current_thread().tid);
    // QEMU reports a breakpoint or finished step as SIGTRAP and an interrupt as SIGINT.
    if (stop.signal == 5) {
        e.reason = StopEvent::Reason::kBreakpoint;
    } else if (stop.signal == 2) {
        e.reason = StopEvent::Reason::kInterrupted;
    }
    return e;
}

ErrorOr<bool> GdbstubAccess::stopped_by_others() {
    if (!client_->running()) return false;
    auto stop = TRY(client_->poll_stop());
    if (!stop) return false;
    cache_.clear();
    if (late_interrupt_) {
        // The answer to an interrupt of ours that QEMU took late (QEMU pauses the VM for
        // it, as for an owner's stop): undone, since the caller believes the VM runs.
        late_interrupt_ = false;
        ++counters_.stops;
        TRY(client_->resume());
        return false;
    }
    return true;  // not a stop of ours: counters_ stay as they are
}

ErrorOr<void> GdbstubAccess::resume() {
    cache_.clear();
    run_before_resume();
    TRY(client_->resume());
    note_resumed();
    return {};
}

void GdbstubAccess::run_before_resume() {
    if (auto note = std::exchange(before_resume_, nullptr)) note();
}

void GdbstubAccess::note_resumed() {
    if (stopped_since_) counters_.stopped_ms += elapsed_ms(*stopped_since_);
    stopped_since_.reset();
}

RunControlCounters GdbstubAccess::counters() const {
    RunControlCounters c = counters_;
    if (stopped_since_) c.stopped_ms += elapsed_ms(*stopped_since_);
    return c;
}

ErrorOr<StopEvent> GdbstubAccess::wait_for_stop(Deadline deadline) {
    auto stop = TRY(client_->wait_for_stop(deadline));
    late_interrupt_ = false;  // whichever stop this is, no other one is owed to us
    ++counters_.stops;
    stopped_since_ = Clock::now();
    return to_event(stop);
}

ErrorOr<StopEvent> GdbstubAccess::interrupt(Deadline deadline) {
    auto stop = client_->interrupt(deadline);
    if (!stop) {
        // QEMU did not answer (stopped itself, or overloaded): it may take the interrupt
        // later, and then its stop reply is ours.
        if (client_->running()) late_interrupt_ = true;
        return std::unexpected(stop.error());
    }
    late_interrupt_ = false;
    ++counters_.stops;
    stopped_since_ = Clock::now();
    return to_event(*stop);
}

ErrorOr<StopEvent> GdbstubAccess::step(VcpuId vcpu, Deadline deadline) {
    cache_.clear();
    TRY(client_->step(thread_of(vcpu)));
    auto stop = TRY(client_->wait_for_stop(deadline));
    ++counters_.stops;
    return to_event(stop);
}

ErrorOr<std::vector<VcpuId>> GdbstubAccess::vcpus() {
    std::vector<VcpuId> out;
    for (const auto& t : TRY(client_->threads()))
        out.push_back(static_cast<VcpuId>(t.tid));
    return out;
}

ErrorOr<RegisterSnapshot> GdbstubAccess::snapshot(VcpuId vcpu) {
    if (auto it = cache_.find(vcpu); it != cache_.end()) return it->second;
    TRY(client_->select_thread(thread_of(vcpu)));
    RegisterSnapshot snap;
    snap.vcpu = vcpu;
    snap.raw = TRY(client_->read_registers());
    snap.state = TRY(decode(client_->layout(), snap.raw));
    cache_[vcpu] = snap;
    return snap;
}

ErrorOr<void> GdbstubAccess::restore(const RegisterSnapshot& snapshot) {
    if (snapshot.raw.size() < client_->layout().total_bytes()) {
        return make_error(EINVAL, "register snapshot does not match this stub's layout");
    }
    TRY(client_->select_thread(thread_of(snapshot.vcpu)));
    cache_.erase(snapshot.vcpu);
    TRY(client_->write_registers(snapshot.raw));
    RegisterSnapshot copy = snapshot;
    copy.state = TRY(decode(client_->layout(), copy.raw));
    cache_[snapshot.vcpu] = std::move(copy);
    return {};
}

ErrorOr<void> GdbstubAccess::write_regs(VcpuId vcpu, const kvm_regs& regs) {
    RegisterSnapshot snap = TRY(snapshot(vcpu));
    TRY(encode_regs(client_->layout(), regs, snap.raw));
    // One 'G' packet instead of a 'P' per register: the other fields are written back
    // with the values just read, which QEMU treats as no-ops.
    cache_.erase(vcpu);
    TRY(client_->select_thread(thread_of(vcpu)));
    TRY(client_->write_registers(snap.raw));
    snap.state.regs = regs;
    cache_[vcpu] = std::move(snap);
    return {};
}

ErrorOr<void> GdbstubAccess::use_memory_mode(VcpuId vcpu, bool physical) {
    if (!physical) TRY(client_->select_thread(thread_of(vcpu)));
    return client_->set_physical_mode(physical);
}

ErrorOr<void> GdbstubAccess::read_virtual(VcpuId vcpu, uint64_t va, std::span<uint8_t> out) {
    TRY(use_memory_mode(vcpu, false));
    return client_->read_memory(va, out);
}

ErrorOr<void> GdbstubAccess::write_virtual(VcpuId vcpu, uint64_t va,
                                           std::span<const uint8_t> data) {
    TRY(use_memory_mode(vcpu, false));
    return client_->write_memory(va, data);
}

ErrorOr<void> GdbstubAccess::read_physical(uint64_t pa, std::span<uint8_t> out) {
    TRY(use_memory_mode(0, true));
    return client_->read_memory(pa, out);
}

ErrorOr<void> GdbstubAccess::write_physical(uint64_t pa, std::span<const uint8_t> data) {
    TRY(use_memory_mode(0, true));
    return client_->write_memory(pa, data);
}

ErrorOr<void> GdbstubAccess::insert_breakpoint(uint64_t va) {
    ++counters_.breakpoint_changes;
    return client_->insert_breakpoint(1, va);
}

ErrorOr<void> GdbstubAccess::remove_breakpoint(uint64_t va) {
    ++counters_.breakpoint_changes;
    return client_->remove_breakpoint(1, va);
}

ErrorOr<void> GdbstubAccess::detach() {
    cache_.clear();
    if (client_->physical_mode() && !client_->running()) {
        (void)client_->set_physical_mode(false);
    }
    run_before_resume();
    TRY(client_->detach());
    note_resumed();
    return {};
}

}  // namespace cloudvmi
