#include "common/paths.h"

#include <sys/stat.h>

#include <cerrno>

#include "common/strings.h"

namespace cloudvmi {

ErrorOr<void> make_dirs(const std::string& dir) {
    std::string partial;
    for (auto part : split(dir, '/')) {
        partial += std::string(part) + "/";
        if (part.empty()) continue;
        if (::mkdir(partial.c_str(), 0700) < 0 && errno != EEXIST) {
            return errno_error("creating " + partial);
        }
    }
    return {};
}

}  // namespace cloudvmi
