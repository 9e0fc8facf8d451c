// Unit tests' main: the code under test logs its errors, which are expected here; they go
// to /dev/null unless CLOUDVMI_LOG asks for them.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdlib>

#include "common/log.h"

int main(int argc, char** argv) {
    if (std::getenv("CLOUDVMI_LOG") == nullptr) cloudvmi::log::set_output_file("/dev/null");
    return Catch::Session().run(argc, argv);
}
