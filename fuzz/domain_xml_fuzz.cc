// Fuzzes what cloudvmi reads from a libvirt domain's XML (nodes/domain_xml.h): the domain
// owner writes it, <qemu:commandline> included, and the mount turns it into a directory
// name and socket paths.
//
// Invariants: a parse either fails with EINVAL or gives a name; an endpoint is "" or
// "unix:/..." / "tcp:HOST:PORT" with no option suffix (no comma).
#include <string>

#include "fuzz/fuzz_check.h"
#include "nodes/domain_xml.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

namespace {

void check_endpoint(const std::string& e) {
    if (e.empty()) return;
    FUZZ_CHECK(e.starts_with("unix:") || e.starts_with("tcp:"));
    FUZZ_CHECK(e.find(',') == std::string::npos);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(fuzz::as_text(data, size));
    auto d = nodes::parse_domain_xml(text);
    if (!d) {
        FUZZ_CHECK(d.error().code() == EINVAL);
        return 0;
    }
    FUZZ_CHECK(!d->name.empty());
    check_endpoint(d->gdb);
    check_endpoint(d->qmp);
    check_endpoint(nodes::endpoint_from_chardev(text));
    return 0;
}
