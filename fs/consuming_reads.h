// Guest files whose reading takes something away: the kernel log's /proc/kmsg (messages read
// there are gone for the guest's own syslog) and the tracing pipes. A `cat` through /vmi
// must not steal them, so they are refused unless the configuration allows them.
#pragma once

#include <string_view>

namespace cloudvmi::fs {

// `guest_path`: the file's path in the guest ("/proc/kmsg").
bool consumes_on_read(std::string_view guest_path);

}  // namespace cloudvmi::fs
