// The VMs of a node directory as they come and go (fs/vm_set.h).
#include <catch2/catch.hpp>

#include "fs/mount_watch.h"
#include "fs/vm_set.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;

namespace {

VmSpec spec(const std::string& name, const std::string& gdb) {
    VmSpec s;
    s.config.name = name;
    s.config.gdb = gdb;
    s.options.attach_timeout = Millis(200);
    return s;
}

std::vector<std::string> names(const VmSet& set) {
    std::vector<std::string> out;
    for (Vm* vm : set.list())
        out.push_back(vm->name());
    return out;
}

}  // namespace

TEST_CASE("VmSet: VMs appear, disappear and are replaced when their sockets change", "[fs]") {
    int prepared = 0;
    VmSet set("lab", [&](Vm& vm) {
        ++prepared;
        CHECK(vm.node() == "lab");
    });
    auto c = set.update({spec("b", "unix:/nonexistent/b"), spec("a", "unix:/nonexistent/a")});
    CHECK(c.added == std::vector<std::string>{"a", "b"});
    CHECK(c.removed.empty());
    CHECK(names(set) == std::vector<std::string>{"a", "b"});
    CHECK(prepared == 2);
    Vm* a = set.find("a");
    REQUIRE(a != nullptr);

    // The same again: nothing changes, the same objects serve.
    CHECK(set.update({spec("a", "unix:/nonexistent/a"), spec("b", "unix:/nonexistent/b")}).empty());
    CHECK(set.find("a") == a);

    // a goes: retired, still a valid object for whoever holds it; its queue is closed.
    c = set.update({spec("b", "unix:/nonexistent/b")});
    CHECK(c.removed == std::vector<std::string>{"a"});
    CHECK(set.find("a") == nullptr);
    CHECK(a->name() == "a");
    CHECK(names(set) == std::vector<std::string>{"b"});

    // a comes back: a new VM. b's socket moved: b is replaced.
    c = set.update({spec("a", "unix:/nonexistent/a"), spec("b", "unix:/nonexistent/b2")});
    CHECK(c.added == std::vector<std::string>{"a", "b"});
    CHECK(c.removed == std::vector<std::string>{"b"});
    CHECK(set.find("a") != a);
    CHECK(set.find("b")->config().gdb == "unix:/nonexistent/b2");
    int all = 0;
    set.for_each([&](Vm&) { ++all; });
    CHECK(all == 4);  // two live, two retired
    CHECK(prepared == 4);
}

TEST_CASE("mountinfo lines: device and unescaped mount point", "[fs]") {
    std::string device, point;
    REQUIRE(parse_mountinfo_line(
        "36 35 0:52 / /tmp/with\\040space/vmi rw,nosuid,nodev - fuse cloudvmi rw", device, point));
    CHECK(device == "0:52");
    CHECK(point == "/tmp/with space/vmi");
    REQUIRE(parse_mountinfo_line("22 27 0:21 / /proc rw,relatime - proc proc rw", device, point));
    CHECK(point == "/proc");
    CHECK_FALSE(parse_mountinfo_line("garbage", device, point));
    CHECK_FALSE(parse_mountinfo_line("1 2 nodevice / /x", device, point));
    // A trailing backslash without its three digits stays as it is.
    REQUIRE(parse_mountinfo_line("1 2 0:1 / /x\\04", device, point));
    CHECK(point == "/x\\04");
    // The watch of a path nothing is mounted on never reports a mount gone.
    MountWatch nothing("/nonexistent/cloudvmi");
    CHECK_FALSE(nothing.watching());
    CHECK_FALSE(nothing.gone());
    MountWatch proc("/proc");
    CHECK(proc.watching());
    CHECK_FALSE(proc.gone());
}

TEST_CASE("VmSet: a VM restarted between two listings gets a new Vm", "[fs]") {
    VmSet set("lab", {});
    auto first = spec("a", "unix:/nonexistent/a");
    first.identity = "uuid-1/3";
    set.update({first});
    Vm* before = set.find("a");
    auto again = first;
    CHECK(set.update({again}).empty());
    again.identity = "uuid-1/4";  // destroyed and started again: another domain id
    auto c = set.update({again});
    CHECK(c.removed == std::vector<std::string>{"a"});
    CHECK(c.added == std::vector<std::string>{"a"});
    CHECK(set.find("a") != before);
}
