// `cloudvmi guard`: internal, started by every session (see redirector/recovery/guardian.h).
#include <cstdio>

#include "cli/commands.h"
#include "redirector/recovery/guardian.h"

namespace cloudvmi::cli {

int guard_main(int argc, char** argv) {
    auto args = parse_guardian_args(argc, argv);
    if (!args) {
        std::fprintf(stderr, "cloudvmi guard: %s\n", args.error().describe().c_str());
        return kExitUsage;
    }
    return run_guardian(*args);
}

}  // namespace cloudvmi::cli
