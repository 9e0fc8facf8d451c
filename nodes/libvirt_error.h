// libvirt's last error on this thread, as an Error with our errno and context.
#pragma once

#include <libvirt/virterror.h>

#include <string>

#include "common/error.h"

namespace cloudvmi::nodes {

inline Error libvirt_error(int code, const std::string& what) {
    return Error(code, what + ": " + virGetLastErrorMessage());
}

}  // namespace cloudvmi::nodes
