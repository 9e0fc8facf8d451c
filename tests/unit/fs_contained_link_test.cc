// Guest symlinks shown through /vmi never resolve outside their VM's tree.
#include <catch2/catch.hpp>

#include "fs/contained_link.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;

namespace {

std::string contained(const char* top, const char* link, const std::string& target) {
    auto r = contain_link_target(top, link, target);
    INFO(link << " -> " << target << ": " << (r ? *r : r.error().describe()));
    REQUIRE(r);
    return *r;
}

}  // namespace

TEST_CASE("contained links: absolute targets stay in the VM's root/", "[fs]") {
    CHECK(contained("/", "/bin/sh", "/bin/busybox") == "../bin/busybox");
    CHECK(contained("/", "/srv/x", "/etc/hostname") == "../etc/hostname");
    CHECK(contained("/", "/a/b/c/x", "/") == "../../..");
    CHECK(contained("/", "/x", "/") == ".");
    CHECK(contained("/", "/x", "//etc/./hostname/") == "etc/hostname");
}

TEST_CASE("contained links: targets that climb above the tree are clamped like the guest's",
          "[fs]") {
    // In the guest /srv/../../../etc is /etc; on the host the same text would leave the VM.
    CHECK(contained("/", "/srv/x", "../../../../etc/hostname") == "../etc/hostname");
    CHECK(contained("/", "/x", "..") == ".");
    CHECK(contained("/sys", "/sys/class/x", "../../../etc") == "../../root/etc");
}

TEST_CASE("contained links: relative targets below their tree are kept", "[fs]") {
    CHECK(contained("/", "/usr/bin/x", "../lib/y") == "../lib/y");
    CHECK(contained("/sys", "/sys/class/net/lo", "../../devices/virtual/net/lo") ==
          "../../devices/virtual/net/lo");
    CHECK(contained("/proc", "/proc/self", "123") == "123");
    CHECK(contained("/proc", "/proc/mounts", "self/mounts") == "self/mounts");
    CHECK(contained("/proc", "/proc/1/fd/0", "socket:[12]") == "socket:[12]");
    CHECK(contained("/proc", "/proc/1/fd/1", "anon_inode:[eventfd]") == "anon_inode:[eventfd]");
}

TEST_CASE("contained links: proc's magic links lead into the VM", "[fs]") {
    // proc/1/root: the guest's /, which is the VM's root/ (a sibling of proc/).
    CHECK(contained("/proc", "/proc/1/root", "/") == "../../root");
    CHECK(contained("/proc", "/proc/1/exe", "/bin/busybox") == "../../root/bin/busybox");
    CHECK(contained("/proc", "/proc/1/fd/3", "/dev/pts/0 (deleted)") ==
          "../../../root/dev/pts/0 (deleted)");
    // Inside proc itself: stays in proc/.
    CHECK(contained("/proc", "/proc/1/cwd", "/proc/2") == "../2");
    CHECK(contained("/proc", "/proc/1/x", "../../proc/2") == "../2");
}

TEST_CASE("contained links: what cannot be kept inside is refused", "[fs]") {
    std::string deep = "/" + std::string(4090, 'a');
    auto r = contain_link_target("/proc", "/proc/1/2/3/4/5/6/7/8/x", deep);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ENAMETOOLONG);
    CHECK_FALSE(contain_link_target("/proc", "/sys/x", "/"));
    CHECK_FALSE(contain_link_target("/", "/a/../b/l", "../x"));  // found by the fuzzer
    CHECK(contained("/", "/x", "") == "");
}

TEST_CASE("contained links: a chain of kept links cannot climb out", "[fs]") {
    // s -> ../.. is kept (it climbs the link's real parents, within root/); a target with
    // ".." after a name is rewritten, since the host would follow s first: s/../../.. would
    // climb from root/ into the mount, into other VMs.
    CHECK(contained("/", "/p/q/s", "../..") == "../..");
    CHECK(contained("/", "/p/q/l", "s/../../..") == "../..");
    CHECK(contained("/", "/p/q/m", "s/..") == "../../p/q");
    CHECK(contained("/proc", "/proc/1/x", "task/../..") == "..");
}
