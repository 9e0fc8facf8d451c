#include "redirector/gdb/gdb_client.h"

#include <algorithm>

#include "common/log.h"
#include "common/strings.h"

namespace cloudvmi::gdb {

namespace {
// Bounds on what a misbehaving stub can make us loop over.
constexpr size_t kMaxTargetDescription = 1u << 20;  // bytes of one document
constexpr size_t kMaxThreads = 4096;                // vCPUs
constexpr int kMaxConsolePackets = 10000;           // between two stop replies
}  // namespace

namespace {

// How long the handshake waits for the stub's answer to qSupported before concluding the
// peer is not a GDB stub (the stop reply QEMU sends on connect comes first).
constexpr int kMaxUnsolicitedPackets = 8;

bool is_stop_reply(std::string_view p) {
    return !p.empty() && (p[0] == 'T' || p[0] == 'S' || p[0] == 'W' || p[0] == 'X') &&
           parse_stop_reply(p).has_value();
}

}  // namespace

int stub_error_to_errno(std::string_view reply) {
    if (!is_error_reply(reply)) return EPROTO;
    // QEMU writes errno values in decimal ("E14" = EFAULT, "E22" = EINVAL), although the
    // protocol calls them hex; other stubs use their own numbers. Only trust the ones we
    // know, and call the rest EIO.
    if (reply == "E14") return EFAULT;
    if (reply == "E22") return EINVAL;
    return EIO;
}

ErrorOr<std::unique_ptr<GdbClient>> GdbClient::connect(const Endpoint& endpoint,
                                                       ClientOptions options) {
    auto conn = TRY(RspConnection::connect(endpoint, Deadline::after(options.connect_timeout)));
    std::unique_ptr<GdbClient> client(new GdbClient(std::move(conn), options));
    TRY_CTX(client->handshake(), "handshake with gdbstub " + endpoint.to_string());
    return client;
}

ErrorOr<void> GdbClient::handshake() {
    auto deadline = Deadline::after(options_.connect_timeout);
    TRY(conn_->send_packet("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386",
                           deadline));
    std::string features;
    for (int i = 0;; ++i) {
        std::string reply = TRY(conn_->receive_packet(deadline));
        if (is_stop_reply(reply) && i < kMaxUnsolicitedPackets) {
            // QEMU stops the VM when a client connects and says so before anything else.
            LOG_DEBUG("drained unsolicited stop reply '%s' on attach", reply.c_str());
            continue;
        }
        features = reply;
        break;
    }
    if (is_error_reply(features)) {
        return make_error(EPROTO, "stub rejected qSupported: " + printable(features));
    }
    bool no_ack_supported = false;
    size_t packet_size = 0;
    for (auto f : split(features, ';')) {
        if (f == "multiprocess+") multiprocess_ = true;
        if (f == "QStartNoAckMode+") no_ack_supported = true;
        if (starts_with(f, "PacketSize=")) {
            packet_size = static_cast<size_t>(parse_hex_u64(f.substr(11)).value_or(0));
        }
    }
    if (packet_size >= 256) {
        max_memory_chunk_ = std::min<size_t>((packet_size - 64) / 2, 2016);
    }
    if (no_ack_supported) {
        std::string r = TRY(request("QStartNoAckMode"));
        if (r == "OK") conn_->set_ack_mode(false);
    }

    // Reading the description is what makes 'p'/'P' work on QEMU, so it comes early.
    auto fetch = [this](const std::string& name) -> ErrorOr<std::string> {
        std::string doc;
        size_t offset = 0;
        while (true) {
            std::string r = TRY(request(
                strformat("qXfer:features:read:%s:%zx,%zx", name.c_str(), offset, size_t{0xffb})));
            if (r.empty() || is_error_reply(r) || (r[0] != 'm' && r[0] != 'l')) {
                return make_error(
                    EPROTO, "stub has no target description " + name + " (" + printable(r) + ")");
            }
            // A stub whose 'm' answers never advance would be asked for ever.
            if (r[0] == 'm' && r.size() == 1) {
                return make_error(EPROTO, "stub's target description " + name +
                                              " does not advance (empty 'm' answer)");
            }
            doc.append(r, 1);
            offset += r.size() - 1;
            if (r[0] == 'l') break;
            if (doc.size() > kMaxTargetDescription) {
                return make_error(EPROTO, "stub's target description " + name + " is too long");
            }
        }
        return doc;
    };
    layout_ = TRY(RegisterLayout::load(fetch));
    for (const char* must : {"rax", "rip", "eflags", "cs", "cr3"}) {
        if (layout_.find(must) == nullptr) {
            return make_error(EPROTO, strformat("target is not x86-64 (no register %s; "
                                                "architecture '%s')",
                                                must, layout_.architecture().c_str()));
        }
    }

    // Physical mode outlives clients in QEMU: never inherit it from a dead one.
    std::string phys = TRY(request("Qqemu.PhyMemMode:0"));
    (void)phys;  // "" on stubs without the extension, which are always virtual
    physical_mode_ = false;

    std::string stop = TRY(request("?"));
    auto parsed = parse_stop_reply(stop);
    if (!parsed) return make_error(EPROTO, "unexpected answer to '?': " + printable(stop));
    note_stop(*parsed);
    running_ = false;
    // A client that died may have left breakpoints behind; start from none.
    TRY(clear_all_breakpoints());
    return {};
}

void GdbClient::note_stop(const StopReply& stop) {
    running_ = false;
    if (stop.thread) {
        // QEMU makes the reporting vCPU the current one for registers and memory.
        g_thread_ = *stop.thread;
    }
}

ErrorOr<void> GdbClient::require_stopped(const char* what) const {
    if (running_) {
        return make_error(EBUSY, strformat("internal: '%s' sent while the VM runs", what));
    }
    return {};
}

ErrorOr<std::string> GdbClient::request(std::string_view payload) {
    TRY(require_stopped(std::string(payload.substr(0, 16)).c_str()));
    auto deadline = request_deadline();
    TRY(conn_->send_packet(payload, deadline));
    return conn_->receive_packet(deadline);
}

ErrorOr<std::string> GdbClient::request_ok(std::string_view payload, const char* what) {
    std::string r = TRY(request(payload));
    if (is_error_reply(r)) {
        return make_error(stub_error_to_errno(r),
                          strformat("gdbstub refused %s (%s)", what, r.c_str()));
    }
    return r;
}

ErrorOr<std::vector<ThreadId>> GdbClient::threads() {
    std::vector<ThreadId> out;
    std::string r = TRY(request_ok("qfThreadInfo", "qfThreadInfo"));
    while (!r.empty() && r[0] == 'm') {
        for (auto part : split(std::string_view(r).substr(1), ',')) {
            auto id = ThreadId::parse(part);
            if (!id) return make_error(EPROTO, "bad thread id in " + printable(r));
            out.push_back(*id);
        }
        if (out.size() > kMaxThreads) return make_error(EPROTO, "implausible vCPU count");
        r = TRY(request_ok("qsThreadInfo", "qsThreadInfo"));
    }
    if (r != "l") return make_error(EPROTO, "bad thread list answer " + printable(r));

    return out;
}

ErrorOr<void> GdbClient::select_thread(ThreadId thread) {
    if (thread == g_thread_) return {};
    std::string r = TRY(request_ok("Hg" + thread.to_string(multiprocess_), "Hg"));
    if (r != "OK") return make_error(EPROTO, "bad answer to Hg: " + printable(r));
    g_thread_ = thread;
    return {};
}

ErrorOr<std::vector<uint8_t>> GdbClient::read_registers() {
    std::string r = TRY(request_ok("g", "register read"));
    auto bytes = hex_decode(r);
    if (!bytes) return make_error(EPROTO, "register file is not hex: " + printable(r));
    if (bytes->size() < layout_.total_bytes()) {
        return make_error(EPROTO, strformat("register file has %zu bytes, description says %zu",
                                            bytes->size(), layout_.total_bytes()));
    }
    return std::move(*bytes);
}

ErrorOr<void> GdbClient::write_registers(std::span<const uint8_t> raw) {
    std::string r = TRY(request_ok("G" + hex_encode(raw), "register write"));
    if (r != "OK") return make_error(EPROTO, "bad answer to G: " + printable(r));
    return {};
}

ErrorOr<void> GdbClient::read_memory(uint64_t addr, std::span<uint8_t> out) {
    size_t done = 0;
    while (done < out.size()) {
        size_t n = std::min(max_memory_chunk_, out.size() - done);
        uint64_t a = addr + done;
        std::string r = TRY(request(strformat("m%llx,%zx", static_cast<unsigned long long>(a), n)));
        if (is_error_reply(r)) {
            return make_error(stub_error_to_errno(r),
                              strformat("reading guest memory at %s", hex_u64(a).c_str()));
        }
        if (r.size() != 2 * n) {
            return make_error(EPROTO,
                              strformat("stub returned %zu hex digits for %zu bytes", r.size(), n));
        }
        auto bytes = hex_decode(r);
        if (!bytes) return make_error(EPROTO, "memory reply is not hex");
        std::copy(bytes->begin(), bytes->end(), out.begin() + static_cast<ptrdiff_t>(done));
        done += n;
    }
    return {};
}

ErrorOr<void> GdbClient::write_memory(uint64_t addr, std::span<const uint8_t> data) {
    size_t done = 0;
    while (done < data.size()) {
        size_t n = std::min(max_memory_chunk_, data.size() - done);
        uint64_t a = addr + done;
        std::string r = TRY(request(strformat("M%llx,%zx:", static_cast<unsigned long long>(a), n) +
                                    hex_encode(data.subspan(done, n))));
        if (r != "OK") {
            return make_error(is_error_reply(r) ? stub_error_to_errno(r) : EPROTO,
                              strformat("writing guest memory at %s (%s)", hex_u64(a).c_str(),
                                        printable(r).c_str()));
        }
        done += n;
    }
    return {};
}

ErrorOr<void> GdbClient::set_physical_mode(bool on) {
    if (on == physical_mode_) return {};
    std::string r =
        TRY(request_ok(on ? "Qqemu.PhyMemMode:1" : "Qqemu.PhyMemMode:0", "physical memory mode"));
    if (r != "OK") return make_error(ENOTSUP, "stub has no physical memory mode");
    physical_mode_ = on;
    return {};
}

ErrorOr<void> GdbClient::insert_breakpoint(int type, uint64_t addr) {
    std::string r = TRY(request_ok(
        strformat("Z%d,%llx,1", type, static_cast<unsigned long long>(addr)), "breakpoint insert"));
    if (r != "OK") {
        return make_error(ENOTSUP, strformat("stub cannot set breakpoint type %d (%s)", type,
                                             printable(r).c_str()));
    }
    return {};
}

ErrorOr<void> GdbClient::remove_breakpoint(int type, uint64_t addr) {
    std::string r = TRY(request_ok(
        strformat("z%d,%llx,1", type, static_cast<unsigned long long>(addr)), "breakpoint remove"));
    if (r != "OK") return make_error(EPROTO, "bad answer to z: " + printable(r));
    return {};
}

ErrorOr<void> GdbClient::resume() {
    TRY(require_stopped("continue"));
    TRY(conn_->send_packet("c", request_deadline()));
    running_ = true;
    return {};
}

ErrorOr<void> GdbClient::step(ThreadId thread) {
    TRY(require_stopped("step"));
    TRY(conn_->send_packet("vCont;s:" + thread.to_string(multiprocess_), request_deadline()));
    running_ = true;
    return {};
}

ErrorOr<StopReply> GdbClient::wait_for_stop(Deadline deadline) {
    if (!running_) return make_error(EINVAL, "internal: waiting for a stop while stopped");
    for (int console = 0;; ++console) {
        std::string p = TRY(conn_->receive_packet(deadline));
        if (p.size() > 1 && p[0] == 'O' && p != "OK") {  // console output
            if (console > kMaxConsolePackets || deadline.expired()) {
                return make_error(EPROTO, "gdbstub floods console output instead of a stop");
            }
            continue;
        }
        auto stop = parse_stop_reply(p);
        if (!stop) {
            return make_error(EPROTO, "expected a stop reply, got " + printable(p));
        }
        note_stop(*stop);
        if (stop->kind != StopReply::Kind::kSignal) {
            return make_error(ENOTCONN, "the VM has exited");
        }
        return *stop;
    }
}

ErrorOr<StopReply> GdbClient::interrupt(Deadline deadline) {
    if (!running_) return make_error(EINVAL, "internal: interrupting a stopped VM");
    TRY(conn_->send_raw("\x03", deadline));
    // If the VM stopped on its own just before, the interrupt is ignored and the stop reply
    // we get is that one: either way exactly one stop reply follows.
    return wait_for_stop(deadline);
}

ErrorOr<std::optional<StopReply>> GdbClient::poll_stop() {
    if (!running_) return make_error(EINVAL, "internal: polling for a stop while stopped");
    for (int console = 0;; ++console) {
        auto p = TRY(conn_->try_receive_packet(Deadline::after(Millis(0))));
        if (!p) return std::optional<StopReply>{};
        if (p->size() > 1 && (*p)[0] == 'O' && *p != "OK") {  // console output
            if (console > kMaxConsolePackets) {
                return make_error(EPROTO, "gdbstub floods console output");
            }
            continue;
        }
        auto stop = parse_stop_reply(*p);
        if (!stop) return make_error(EPROTO, "expected a stop reply, got " + printable(*p));
        note_stop(*stop);
        if (stop->kind != StopReply::Kind::kSignal) {
            return make_error(ENOTCONN, "the VM has exited");
        }
        return std::optional<StopReply>{*stop};
    }
}

ErrorOr<void> GdbClient::clear_all_breakpoints() {
    for (const ThreadId& t : TRY(threads())) {
        std::string r = TRY(request_ok("Hc" + t.to_string(multiprocess_), "Hc"));
        if (r != "OK") return make_error(EPROTO, "bad answer to Hc: " + printable(r));
        std::string stop = TRY(request("?"));  // QEMU: clears the 'c' vCPU's breakpoints
        auto parsed = parse_stop_reply(stop);
        if (!parsed) return make_error(EPROTO, "unexpected answer to '?': " + printable(stop));
    }
    return {};
}

ErrorOr<std::string> GdbClient::monitor(std::string_view command) {
    TRY(require_stopped("monitor command"));
    auto deadline = request_deadline();
    std::string_view cmd = command;
    std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
    TRY(conn_->send_packet("qRcmd," + hex_encode(bytes), deadline));
    std::string output;
    while (true) {
        std::string p = TRY(conn_->receive_packet(deadline));
        if (p == "OK") return output;
        if (p.empty()) return make_error(ENOTSUP, "stub has no monitor");
        if (is_error_reply(p)) {
            return make_error(stub_error_to_errno(p), "monitor command failed: " + printable(p));
        }
        if (p[0] == 'O') {
            auto text = hex_decode(std::string_view(p).substr(1));
            if (!text) return make_error(EPROTO, "bad monitor output packet");
            output.append(text->begin(), text->end());
            if (output.size() > (1u << 22)) return make_error(EPROTO, "monitor output too long");
            continue;
        }
        // Some stubs send the whole output hex-encoded as the reply.
        auto text = hex_decode(p);
        if (!text) return make_error(EPROTO, "bad monitor reply " + printable(p));
        output.append(text->begin(), text->end());
        return output;
    }
}

ErrorOr<void> GdbClient::detach() {
    if (running_) TRY(interrupt(request_deadline()));
    std::string cmd = "D";
    if (multiprocess_)
        cmd += strformat(";%llx",
                         static_cast<unsigned long long>(g_thread_.pid > 0 ? g_thread_.pid : 1));
    std::string r = TRY(request(cmd));
    conn_->close();
    if (r != "OK") return make_error(EPROTO, "bad answer to detach: " + printable(r));
    return {};
}

}  // namespace cloudvmi::gdb
