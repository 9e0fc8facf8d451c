// redirector/gdb/rsp_connection.h: gdbstub endpoints as written in the configuration and
// the recovery log.
#include <catch2/catch.hpp>

#include "redirector/gdb/rsp_connection.h"

using namespace cloudvmi;
using gdb::Endpoint;

TEST_CASE("Endpoint::to_string parses back to the same endpoint", "[stub]") {
    // The recovery log keeps to_string() and the guardian parses it again to restore the
    // guest: both must name the same socket. Found by fuzz/config_fuzz: a bare path with a
    // comma came back cut at the comma ("unix:" makes the rest QEMU-style options), a host
    // in brackets lost them ("[x]" is read as the host x).
    for (const char* text :
         {"/run/vm,1.gdb", "/run/vm.gdb", "unix:/run/vm.gdb,server=on", "tcp:[::1]:1234",
          "tcp:::1:1234", "tcp:[[x]]:6", "tcp:[x:6", "tcp:host:1", "host:65535", ":7"}) {
        INFO(text);
        auto e = Endpoint::parse(text);
        REQUIRE(e);
        auto again = Endpoint::parse(e->to_string());
        REQUIRE(again);
        CHECK(again->kind == e->kind);
        CHECK(again->path == e->path);
        CHECK(again->host == e->host);
        CHECK(again->port == e->port);
    }
    auto comma = Endpoint::parse("/run/vm,1.gdb");
    REQUIRE(comma);
    CHECK(comma->path == "/run/vm,1.gdb");
    auto bracketed = Endpoint::parse("tcp:[[x]]:6");
    REQUIRE(bracketed);
    CHECK(bracketed->host == "[x]");
}
