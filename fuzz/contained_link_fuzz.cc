// Fuzzes the rewriting of guest symbolic links (fs/contained_link.h contain_link_target):
// whatever target a hostile guest writes, the host must never follow it out of the VM.
//
// Input: a tree byte (proc, sys or root), then the link's path below that tree and its
// target, separated by a NUL.
#include <string>
#include <string_view>
#include <vector>

#include "common/strings.h"
#include "fs/contained_link.h"
#include "fuzz/fuzz_check.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

namespace {

// The path's names, "" and "." left out (through common/strings' split, not the code
// under test).
std::vector<std::string_view> components(std::string_view path) {
    std::vector<std::string_view> out;
    for (auto c : split(path, '/'))
        if (!c.empty() && c != ".") out.push_back(c);
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    static const char* kTops[] = {"/proc", "/sys", "/"};
    std::string top = kTops[data[0] % 3];
    std::string rest(fuzz::as_text(data + 1, size - 1));
    size_t nul = rest.find('\0');
    if (nul == std::string::npos) return 0;
    std::string below = rest.substr(0, nul), target = rest.substr(nul + 1);
    std::string link = (top == "/" ? "" : top) + "/" + below;

    auto out = fs::contain_link_target(top, link, target);
    if (!out) return 0;
    // On the host the link sits at <vm>/<tree>/<components below the tree>; its directory is
    // that many levels below <vm>. The host walks the result from there: ".." may only come
    // first (climbing real directories, none above <vm>); after a name, a ".." could climb
    // from wherever a link led.
    auto link_dir = components(link);
    if (link_dir.empty()) return 0;
    link_dir.pop_back();
    size_t depth = 1 + link_dir.size() - components(top).size();
    bool named = false;
    for (const auto& c : components(*out)) {
        if (c == "..") {
            FUZZ_CHECK(!named);
            FUZZ_CHECK(depth > 0);
            --depth;
        } else {
            named = true;
        }
    }
    FUZZ_CHECK(out->size() < 4096);
    return 0;
}
