// The mount command's options: ours taken out, FUSE's handed on in order.
#include "cli/mount_options.h"

#include <catch2/catch.hpp>

using namespace cloudvmi;
using namespace cloudvmi::cli;
using Args = std::vector<std::string>;

TEST_CASE("mount options: ours as long options, FUSE's passed on", "[cli]") {
    auto m = parse_mount_options({"--config", "/etc/c.yaml", "-f", "--state-dir=/run/x", "/vmi"});
    REQUIRE(m);
    CHECK(m->config == "/etc/c.yaml");
    CHECK(m->state_dir == "/run/x");
    CHECK_FALSE(m->log_level);
    CHECK(m->mountpoint == "/vmi");
    CHECK(m->fuse_args == Args{"cloudvmi", "-f", "/vmi"});
}

TEST_CASE("mount options: ours inside -o lists, the rest of the list kept", "[cli]") {
    // As mount.fuse3 calls it for an fstab line: SOURCE MOUNTPOINT -o LIST.
    auto m = parse_mount_options(
        {"cloudvmi", "/vmi", "-o", "allow_other,config=/c.yaml,log_level=debug,ro"});
    REQUIRE(m);
    CHECK(m->config == "/c.yaml");
    CHECK(m->log_level == "debug");
    CHECK(m->mountpoint == "/vmi");
    CHECK(m->fuse_args == Args{"cloudvmi", "-o", "allow_other,ro", "/vmi"});

    auto only_ours = parse_mount_options({"-ostate_dir=/s", "/vmi"});
    REQUIRE(only_ours);
    CHECK(only_ours->state_dir == "/s");
    CHECK(only_ours->fuse_args == Args{"cloudvmi", "/vmi"});
}

TEST_CASE("mount options: help and version need no mount point", "[cli]") {
    auto h = parse_mount_options({"--help"});
    REQUIRE(h);
    CHECK(h->help);
    auto v = parse_mount_options({"-V"});
    REQUIRE(v);
    CHECK(v->version);
}

TEST_CASE("mount options: mistakes are named", "[cli]") {
    auto describe = [](const Args& a) {
        auto m = parse_mount_options(a);
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == EINVAL);
        return m.error().message();
    };
    CHECK(describe({}) == "expected a mount point");
    CHECK(describe({"--config"}) == "--config needs a value");
    CHECK(describe({"-o"}) == "-o needs a value");
    CHECK(describe({"-o", "config=", "/vmi"}) == "-o config needs a value");
    CHECK(describe({"--bogus", "/vmi"}) == "unknown option --bogus");
    CHECK(describe({"a", "b", "c"}) ==
          "expected a mount point (after at most a source), got 3 arguments");
}
