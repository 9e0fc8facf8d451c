// /vmi, /vmi/<node> and /vmi/<node>/.cloudvmi: the inventory levels, answered locally.
#include "fs/filesystem.h"

namespace cloudvmi::fs {

namespace {

class RootDir final : public Node {
  public:
    explicit RootDir(Filesystem& fs) : fs_(fs) {}
    std::string key() const override { return "/"; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 60}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        if (name == ".cloudvmi") return make_mount_dir(fs_);
        for (const auto& node : fs_.node_names()) {
            if (name == node) return make_node_dir(fs_, name);
        }
        return make_error(ENOENT, "no node " + name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        std::vector<DirEntry> out;
        for (const auto& node : fs_.node_names())
            out.push_back(DirEntry{node, S_IFDIR, plus ? make_node_dir(fs_, node) : nullptr});
        out.push_back(DirEntry{".cloudvmi", S_IFDIR, plus ? make_mount_dir(fs_) : nullptr});
        return out;
    }

  private:
    Filesystem& fs_;
};

// A node's VMs come and go (libvirt nodes): the kernel keeps this listing for a second at
// most, and the mount tells it to forget sooner when a VM appears or disappears.
class NodeDir final : public Node {
  public:
    NodeDir(Filesystem& fs, std::string node) : fs_(fs), node_(std::move(node)) {}
    std::string key() const override { return "n:" + node_; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        if (name == ".cloudvmi") return make_node_info_dir(fs_, node_);
        VmSet* set = fs_.find_node(node_);
        if (Vm* vm = set ? set->find(name) : nullptr) return make_vm_dir(*vm);
        return make_error(ENOENT, "no VM " + name + " on node " + node_);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        std::vector<DirEntry> out;
        if (VmSet* set = fs_.find_node(node_)) {
            for (Vm* vm : set->list())
                out.push_back(DirEntry{vm->name(), S_IFDIR, plus ? make_vm_dir(*vm) : nullptr});
        }
        out.push_back(
            DirEntry{".cloudvmi", S_IFDIR, plus ? make_node_info_dir(fs_, node_) : nullptr});
        return out;
    }

  private:
    Filesystem& fs_;
    std::string node_;
};

class NodeInfoDir final : public Node {
  public:
    NodeInfoDir(Filesystem& fs, std::string node) : fs_(fs), node_(std::move(node)) {}
    std::string key() const override { return "ni:" + node_; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        if (name == "status") return status_file();
        return make_error(ENOENT, name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        return std::vector<DirEntry>{DirEntry{"status", S_IFREG, plus ? status_file() : nullptr}};
    }

  private:
    std::shared_ptr<Node> status_file() const {
        return make_text_file("ni:" + node_ + "/status",
                              [&fs = fs_, node = node_] { return fs.node_status(node); });
    }

    Filesystem& fs_;
    std::string node_;
};

}  // namespace

std::shared_ptr<Node> make_root_dir(Filesystem& fs) {
    return std::make_shared<RootDir>(fs);
}

std::shared_ptr<Node> make_node_dir(Filesystem& fs, const std::string& node) {
    if (auto* peer = fs.find_remote(node)) return make_remote_node_dir(fs, *peer, node);
    return std::make_shared<NodeDir>(fs, node);
}

std::shared_ptr<Node> make_node_info_dir(Filesystem& fs, const std::string& node) {
    return std::make_shared<NodeInfoDir>(fs, node);
}

}  // namespace cloudvmi::fs
