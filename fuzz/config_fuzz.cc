// Fuzzes the mount's configuration reader (fs/config.h Config::parse, on yaml-cpp) and the
// gdb endpoint syntax it checks (redirector/gdb/rsp_connection.h Endpoint::parse).
//
// Input: the text of a configuration file.
#include <string>

#include "fs/config.h"
#include "fuzz/fuzz_check.h"
#include "redirector/gdb/rsp_connection.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(fuzz::as_text(data, size));

    // Never an exception: a bad file is an error that names it.
    auto c = fs::Config::parse(text, "fuzz.yaml");
    if (!c) {
        FUZZ_CHECK(c.error().code() == EINVAL);
        FUZZ_CHECK(c.error().message().rfind("fuzz.yaml", 0) == 0);
    } else {
        FUZZ_CHECK(fs::is_valid_entry_name(c->node));
        FUZZ_CHECK(c->request_timeout_ms >= 100 && c->request_timeout_ms <= 600000);
        FUZZ_CHECK(c->attach_timeout_ms >= 100 && c->attach_timeout_ms <= 600000);
        for (double v :
             {c->cache.proc_attr, c->cache.proc_entry, c->cache.root_attr, c->cache.root_entry})
            FUZZ_CHECK(v >= 0 && v <= 3600);
        for (const auto& vm : c->vms) {
            FUZZ_CHECK(fs::is_valid_entry_name(vm.name));
            FUZZ_CHECK(gdb::Endpoint::parse(vm.gdb).has_value());
        }
    }

    if (auto e = gdb::Endpoint::parse(text)) {
        // What we print for an endpoint reads back as the same endpoint.
        auto again = gdb::Endpoint::parse(e->to_string());
        FUZZ_CHECK(again.has_value());
        FUZZ_CHECK(again->kind == e->kind && again->path == e->path && again->host == e->host &&
                   again->port == e->port);
    }
    (void)fs::is_valid_entry_name(text);
    return 0;
}
