// Small file-system helpers shared by the mount and the redirector.
#pragma once

#include <string>

#include "common/error.h"

namespace cloudvmi {

// Creates `dir` and its missing parents, each with mode 0700 (state directories hold
// recovery logs and locks that only root should touch).
ErrorOr<void> make_dirs(const std::string& dir);

}  // namespace cloudvmi
