#include "nodes/domain_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <climits>
#include <memory>
#include <vector>

namespace cloudvmi::nodes {

namespace {

constexpr const char* kQemuNamespace = "http://libvirt.org/schemas/domain/qemu/1.0";
// Domain XML is a few KiB; anything far larger is not one libvirt wrote.
constexpr size_t kMaxXml = 4u << 20;

struct DocFree {
    void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
// xmlFree is a variable (a replaceable allocator), not a function.
struct XmlFree {
    void operator()(xmlChar* p) const { xmlFree(p); }
};

std::string owned_string(xmlChar* raw) {
    std::unique_ptr<xmlChar, XmlFree> s(raw);
    return s ? std::string(reinterpret_cast<const char*>(s.get())) : std::string();
}

bool named(const xmlNode* n, const char* name) {
    return n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, BAD_CAST name) == 0;
}

bool in_qemu_namespace(const xmlNode* n) {
    return n->ns != nullptr && n->ns->href != nullptr &&
           xmlStrcmp(n->ns->href, BAD_CAST kQemuNamespace) == 0;
}

std::string text_of(const xmlNode* n) {
    return owned_string(xmlNodeGetContent(n));
}

std::string attribute(const xmlNode* n, const char* name) {
    return owned_string(xmlGetProp(n, BAD_CAST name));
}

// The values of <qemu:arg value="..."/> under every <qemu:commandline>, in order.
std::vector<std::string> qemu_args(const xmlNode* domain) {
    std::vector<std::string> args;
    for (const xmlNode* c = domain->children; c != nullptr; c = c->next) {
        if (!named(c, "commandline") || !in_qemu_namespace(c)) continue;
        for (const xmlNode* a = c->children; a != nullptr; a = a->next) {
            if (named(a, "arg") && in_qemu_namespace(a)) args.push_back(attribute(a, "value"));
        }
    }
    return args;
}

// The value of option `name` ("-gdb") in `args`: "-gdb X" or "-gdb=X"; the last one wins,
// as with QEMU's own parsing.
std::string option_value(const std::vector<std::string>& args, std::string_view name) {
    std::string value;
    for (size_t i = 0; i < args.size(); ++i) {
        std::string_view a = args[i];
        if (a.starts_with("--")) a.remove_prefix(1);
        if (a == name && i + 1 < args.size()) {
            value = args[++i];
        } else if (a.starts_with(name) && a.size() > name.size() && a[name.size()] == '=') {
            value = std::string(a.substr(name.size() + 1));
        }
    }
    return value;
}

bool has_flag(const std::vector<std::string>& args, std::string_view flag) {
    for (std::string_view a : args) {
        if (a == flag) return true;
    }
    return false;
}

}  // namespace

std::string endpoint_from_chardev(std::string_view address) {
    std::string_view main = address.substr(0, address.find(','));
    if (main.starts_with("unix:")) {
        std::string_view path = main.substr(5);
        return path.empty() ? "" : "unix:" + std::string(path);
    }
    if (main.starts_with("tcp:")) {
        std::string_view rest = main.substr(4);
        size_t colon = rest.rfind(':');
        if (colon == std::string_view::npos) return "";
        std::string host(rest.substr(0, colon));
        std::string_view port = rest.substr(colon + 1);
        if (port.empty() || port.size() > 5 ||
            port.find_first_not_of("0123456789") != std::string_view::npos ||
            std::stoul(std::string(port)) > 65535)
            return "";
        if (host.empty() || host == "0.0.0.0") host = "localhost";
        return "tcp:" + host + ":" + std::string(port);
    }
    return "";
}

ErrorOr<DomainDescription> parse_domain_xml(std::string_view xml) {
    if (xml.size() > kMaxXml) return make_error(EINVAL, "domain XML larger than 4 MiB");
    // Before node threads parse at once (libxml2's global state).
    static const bool initialised = [] {
        xmlInitParser();
        return true;
    }();
    (void)initialised;
    std::unique_ptr<xmlDoc, DocFree> doc(
        xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml", nullptr,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
    if (!doc) {
        const xmlError* e = xmlGetLastError();
        std::string why = e != nullptr && e->message != nullptr ? e->message : "malformed";
        while (!why.empty() && why.back() == '\n')
            why.pop_back();
        return make_error(EINVAL, "domain XML: " + why);
    }
    // libvirt never writes one; its entities would be expanded into names and paths.
    if (doc->intSubset != nullptr || doc->extSubset != nullptr)
        return make_error(EINVAL, "domain XML: a document type declaration is not accepted");
    const xmlNode* root = xmlDocGetRootElement(doc.get());
    if (root == nullptr || !named(root, "domain"))
        return make_error(EINVAL, "domain XML: the root element is not <domain>");
    DomainDescription d;
    for (const xmlNode* c = root->children; c != nullptr; c = c->next) {
        if (named(c, "name") && c->ns == nullptr) d.name = text_of(c);
        if (named(c, "uuid") && c->ns == nullptr) d.uuid = text_of(c);
    }
    if (d.name.empty()) return make_error(EINVAL, "domain XML: no <name>");
    auto args = qemu_args(root);
    std::string gdb = option_value(args, "-gdb");
    if (!gdb.empty()) {
        d.gdb = endpoint_from_chardev(gdb);
    } else if (has_flag(args, "-s")) {
        d.gdb = "tcp:localhost:1234";
    }
    d.qmp = endpoint_from_chardev(option_value(args, "-qmp"));
    return d;
}

}  // namespace cloudvmi::nodes
