// The state directory and its files are trusted only when they are ours alone.
#include "common/paths.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "tests/unit/temp_dir.h"

using namespace cloudvmi;

TEST_CASE("private state directory: made 0700, refused when others could write in it", "[paths]") {
    test::TempDir t("cloudvmi-paths");
    std::string made = t.path() + "/a/b/state";
    REQUIRE(ensure_private_dir(made));
    struct stat st {};
    REQUIRE(::stat(made.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0700);
    REQUIRE(ensure_private_dir(made));  // again: fine

    std::string open_dir = t.path() + "/open";
    REQUIRE(::mkdir(open_dir.c_str(), 0777) == 0);
    REQUIRE(::chmod(open_dir.c_str(), 0777) == 0);
    auto r = ensure_private_dir(open_dir);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == EPERM);
    CHECK(r.error().message().find("mode 0777") != std::string::npos);
    CHECK(r.error().message().find("chmod 700") != std::string::npos);

    std::string link = t.path() + "/link";
    REQUIRE(::symlink(made.c_str(), link.c_str()) == 0);
    auto l = ensure_private_dir(link);
    REQUIRE_FALSE(l);
    CHECK(l.error().message().find("symbolic link") != std::string::npos);

    if (::geteuid() == 0) {
        std::string theirs = t.path() + "/theirs";
        REQUIRE(::mkdir(theirs.c_str(), 0700) == 0);
        REQUIRE(::chown(theirs.c_str(), 65534, 65534) == 0);
        auto o = ensure_private_dir(theirs);
        REQUIRE_FALSE(o);
        CHECK(o.error().message().find("belongs to uid 65534") != std::string::npos);
    }
}

TEST_CASE("private files: never through a link, only our own regular files", "[paths]") {
    test::TempDir t("cloudvmi-paths");
    std::string file = t.path() + "/vm.log";
    auto created = open_private_file(file, O_RDWR | O_CREAT);
    REQUIRE(created);
    struct stat st {};
    REQUIRE(::fstat(created->get(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(open_private_file(file, O_RDONLY));

    // A log swapped for a link to a file elsewhere (say /etc/shadow) is refused.
    std::string elsewhere = t.path() + "/elsewhere";
    std::ofstream(elsewhere) << "x";
    std::string link = t.path() + "/link.log";
    REQUIRE(::symlink(elsewhere.c_str(), link.c_str()) == 0);
    auto l = open_private_file(link, O_RDWR | O_CREAT);
    REQUIRE_FALSE(l);
    CHECK(l.error().code() == EPERM);
    CHECK(l.error().message().find("symbolic link") != std::string::npos);

    std::string hard = t.path() + "/hard.log";
    REQUIRE(::link(elsewhere.c_str(), hard.c_str()) == 0);
    auto h = open_private_file(hard, O_RDWR);
    REQUIRE_FALSE(h);
    CHECK(h.error().message().find("hard links") != std::string::npos);

    std::string dir = t.path() + "/dir.log";
    REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
    CHECK_FALSE(open_private_file(dir, O_RDONLY));

    if (::geteuid() == 0) {
        std::string theirs = t.path() + "/theirs.log";
        std::ofstream(theirs) << "forged";
        REQUIRE(::chown(theirs.c_str(), 65534, 65534) == 0);
        auto o = open_private_file(theirs, O_RDONLY);
        REQUIRE_FALSE(o);
        CHECK(o.error().message().find("belongs to uid 65534") != std::string::npos);
    }
}

TEST_CASE("private state directory: refused under a directory others can write", "[paths]") {
    test::TempDir t("cloudvmi-paths");
    std::string open_parent = t.path() + "/shared";
    REQUIRE(::mkdir(open_parent.c_str(), 0777) == 0);
    REQUIRE(::chmod(open_parent.c_str(), 0777) == 0);  // not sticky: entries can be renamed
    auto r = ensure_private_dir(open_parent + "/state");
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == EPERM);
    CHECK(r.error().message().find(open_parent + ", above the state directory") !=
          std::string::npos);
    // Sticky, like /tmp: others cannot move our directory away.
    REQUIRE(::chmod(open_parent.c_str(), 01777) == 0);
    CHECK(ensure_private_dir(open_parent + "/state"));
    // A trailing slash does not let a link through.
    std::string link = t.path() + "/link";
    REQUIRE(::symlink((open_parent + "/state").c_str(), link.c_str()) == 0);
    CHECK_FALSE(ensure_private_dir(link + "/"));
}

TEST_CASE("private files: a fifo in place of a log is refused without blocking", "[paths]") {
    test::TempDir t("cloudvmi-paths");
    std::string fifo = t.path() + "/vm.log";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    auto r = open_private_file(fifo, O_RDONLY);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("not a regular file") != std::string::npos);
}
