// /vmi and /vmi/<node>: the inventory levels, answered locally.
#include "fs/filesystem.h"

namespace cloudvmi::fs {

namespace {

class RootDir final : public Node {
  public:
    explicit RootDir(Filesystem& fs) : fs_(fs) {}
    std::string key() const override { return "/"; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 60}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        if (name == fs_.config().node) return make_node_dir(fs_, name);
        if (name == ".cloudvmi") return make_mount_dir(fs_);
        return make_error(ENOENT, "no node " + name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        DirEntry e{fs_.config().node, S_IFDIR, nullptr};
        if (plus) e.node = make_node_dir(fs_, fs_.config().node);
        DirEntry m{".cloudvmi", S_IFDIR, plus ? make_mount_dir(fs_) : nullptr};
        return std::vector<DirEntry>{e, m};
    }

  private:
    Filesystem& fs_;
};

class NodeDir final : public Node {
  public:
    NodeDir(Filesystem& fs, std::string node) : fs_(fs), node_(std::move(node)) {}
    std::string key() const override { return "n:" + node_; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        if (Vm* vm = fs_.find_vm(name)) return make_vm_dir(*vm);
        return make_error(ENOENT, "no VM " + name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        std::vector<DirEntry> out;
        for (const auto& vm : fs_.vms()) {
            DirEntry e{vm->name(), S_IFDIR, nullptr};
            if (plus) e.node = make_vm_dir(*vm);
            out.push_back(std::move(e));
        }
        return out;
    }

  private:
    Filesystem& fs_;
    std::string node_;
};

}  // namespace

std::shared_ptr<Node> make_root_dir(Filesystem& fs) {
    return std::make_shared<RootDir>(fs);
}

std::shared_ptr<Node> make_node_dir(Filesystem& fs, const std::string& node) {
    return std::make_shared<NodeDir>(fs, node);
}

}  // namespace cloudvmi::fs
