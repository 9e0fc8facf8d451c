// /vmi/.cloudvmi/: the mount's own files.
//
//   policy-status  the policy in force, when it was loaded, and the last reload's failure
//   reload         writing anything (host root only) reloads the policy file, as SIGHUP does
//   nodes          every node's state, VM count and listing time
#include <fcntl.h>

#include "fs/filesystem.h"

namespace cloudvmi::fs {

namespace {

class TextHandle final : public FileHandle {
  public:
    explicit TextHandle(std::string text) : text_(std::move(text)) {}
    ErrorOr<std::vector<uint8_t>> read(size_t size, off_t offset) override {
        size_t off = std::min(static_cast<size_t>(std::max<off_t>(offset, 0)), text_.size());
        size_t n = std::min(size, text_.size() - off);
        return std::vector<uint8_t>(text_.begin() + static_cast<ptrdiff_t>(off),
                                    text_.begin() + static_cast<ptrdiff_t>(off + n));
    }

  private:
    std::string text_;
};

class TextFile final : public Node {
  public:
    TextFile(std::string key, std::function<std::string()> text)
        : key_(std::move(key)), text_(std::move(text)) {}
    std::string key() const override { return key_; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFREG | 0444), 0}; }
    ErrorOr<std::unique_ptr<FileHandle>> open(int flags, const Caller&) override {
        if ((flags & O_ACCMODE) != O_RDONLY) return make_error(EACCES, "read-only file");
        return std::unique_ptr<FileHandle>(std::make_unique<TextHandle>(text_()));
    }

  private:
    std::string key_;
    std::function<std::string()> text_;
};

class ReloadHandle final : public FileHandle {
  public:
    explicit ReloadHandle(PolicyStore& policies) : policies_(policies) {}
    ErrorOr<std::vector<uint8_t>> read(size_t, off_t) override {
        return make_error(EBADF, "reload is write-only");
    }
    // A reload that fails keeps the policy in force and says so: EINVAL to the writer.
    ErrorOr<size_t> write(std::span<const uint8_t> data, off_t, const Caller&) override {
        if (!policies_.reload())
            return make_error(EINVAL, "the policy file is broken; see .cloudvmi/policy-status");
        return data.size();
    }

  private:
    PolicyStore& policies_;
};

class ReloadFile final : public Node {
  public:
    explicit ReloadFile(Filesystem& fs) : fs_(fs) {}
    std::string key() const override { return "m:reload"; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFREG | 0200), 0}; }
    ErrorOr<std::unique_ptr<FileHandle>> open(int flags, const Caller& who) override {
        if ((flags & O_ACCMODE) != O_WRONLY) return make_error(EACCES, "reload is write-only");
        if (who.uid != 0) return make_error(EACCES, "only host root reloads the policy");
        return std::unique_ptr<FileHandle>(std::make_unique<ReloadHandle>(fs_.policies()));
    }
    ErrorOr<NodeAttr> setattr(const AttrChange& change, const Caller& who) override {
        if (who.uid == 0 && change.size && *change.size == 0 && !change.mode && !change.uid &&
            !change.gid)
            return getattr();
        return make_error(EACCES, "reload cannot be changed");
    }

  private:
    Filesystem& fs_;
};

using Maker = std::shared_ptr<Node> (*)(Filesystem&);
struct MountFile {
    const char* name;
    Maker make;
};
const MountFile kMountFiles[] = {
    {"policy-status",
     [](Filesystem& fs) -> std::shared_ptr<Node> {
         return make_text_file("m:policy-status", [&fs] { return fs.policies().status_text(); });
     }},
    {"reload",
     [](Filesystem& fs) -> std::shared_ptr<Node> { return std::make_shared<ReloadFile>(fs); }},
    {"nodes",
     [](Filesystem& fs) -> std::shared_ptr<Node> {
         return make_text_file("m:nodes", [&fs] { return fs.nodes_table(); });
     }},
};

class MountDir final : public Node {
  public:
    explicit MountDir(Filesystem& fs) : fs_(fs) {}
    std::string key() const override { return "m:"; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        for (const auto& f : kMountFiles) {
            if (name == f.name) return f.make(fs_);
        }
        return make_error(ENOENT, name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller&) override {
        std::vector<DirEntry> out;
        for (const auto& f : kMountFiles)
            out.push_back(DirEntry{f.name, S_IFREG, plus ? f.make(fs_) : nullptr});
        return out;
    }

  private:
    Filesystem& fs_;
};

}  // namespace

std::shared_ptr<Node> make_mount_dir(Filesystem& fs) {
    return std::make_shared<MountDir>(fs);
}

std::shared_ptr<Node> make_text_file(std::string key, std::function<std::string()> text) {
    return std::make_shared<TextFile>(std::move(key), std::move(text));
}

}  // namespace cloudvmi::fs
