// /vmi/<node>/<vm>: the guest's trees and the session's own files. Answered locally, so
// that the directory is listed even while the VM is down (.cloudvmi/status says why).
#include "fs/filesystem.h"

namespace cloudvmi::fs {

namespace {

struct Child {
    const char* name;
    std::shared_ptr<Node> (*make)(Vm&);
};

const Child kChildren[] = {
    {"proc", [](Vm& vm) { return make_guest_tree_root(vm, GuestTree::kProc); }},
    {"sys", [](Vm& vm) { return make_guest_tree_root(vm, GuestTree::kSys); }},
    {"root", [](Vm& vm) { return make_guest_tree_root(vm, GuestTree::kRoot); }},
    {"ctl", [](Vm& vm) { return make_control_dir(vm); }},
    {".cloudvmi", [](Vm& vm) { return make_session_dir(vm); }},
};

class VmDir final : public Node {
  public:
    explicit VmDir(Vm& vm) : vm_(vm) {}
    std::string key() const override { return "v:" + vm_.key(); }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        for (const auto& c : kChildren) {
            if (name == c.name) return c.make(vm_);
        }
        return make_error(ENOENT, name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        std::vector<DirEntry> out;
        for (const auto& c : kChildren) {
            out.push_back(DirEntry{c.name, S_IFDIR, plus ? c.make(vm_) : nullptr});
        }
        return out;
    }

  private:
    Vm& vm_;
};

}  // namespace

std::shared_ptr<Node> make_vm_dir(Vm& vm) {
    return std::make_shared<VmDir>(vm);
}

}  // namespace cloudvmi::fs
