// `cloudvmi exporter`: Prometheus metrics of every VM and of CloudVMI itself, read from the
// /vmi tree at each scrape. Served over HTTP (prometheus-cpp's exposer) or written once in
// the node exporter's textfile-collector format.
#include <fcntl.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "apps/app_support.h"
#include "apps/apps.h"
#include "apps/guest_snapshot.h"
#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// stats.json fields exported, with their metric, type and scale to base units.
struct StatsField {
    const char* field;
    const char* metric;
    MetricType type;
    double scale;
    const char* help;
};
constexpr StatsField kStatsFields[] = {
    {"requests", "cloudvmi_requests_total", MetricType::Counter, 1, "Requests served for the VM"},
    {"errors", "cloudvmi_errors_total", MetricType::Counter, 1,
     "Requests that failed on the host side (transport, timeout)"},
    {"guest_errors", "cloudvmi_guest_errors_total", MetricType::Counter, 1,
     "Requests the guest kernel answered with an errno"},
    {"queued", "cloudvmi_requests_queued", MetricType::Gauge, 1, "Requests waiting for the VM"},
    {"vm_stops", "cloudvmi_vm_stops_total", MetricType::Counter, 1,
     "Times the VM's vCPUs were stopped by CloudVMI"},
    {"vm_stopped_ms", "cloudvmi_vm_stopped_seconds_total", MetricType::Counter, 0.001,
     "Time the VM's vCPUs stood still for CloudVMI"},
    {"batches", "cloudvmi_batches_total", MetricType::Counter, 1,
     "Batches of system calls injected"},
    {"shadows_created", "cloudvmi_shadows_created_total", MetricType::Counter, 1,
     "Shadow processes created in the guest"},
    {"paused_by_others", "cloudvmi_vm_paused_by_owner", MetricType::Gauge, 1,
     "1 while the VM's owner keeps it paused (requests fail with EAGAIN)"},
};
// Latency quantiles of stats.json, in milliseconds there, in seconds here.
constexpr std::pair<const char*, const char*> kLatencyFields[] = {
    {"latency_p50_ms", "0.5"}, {"latency_p90_ms", "0.9"}, {"latency_p99_ms", "0.99"}};

class Families {
  public:
    MetricFamily& family(const std::string& name, MetricType type, const std::string& help) {
        auto [it, fresh] = index_.emplace(name, families_.size());
        if (fresh) families_.push_back(MetricFamily{name, help, type, {}});
        return families_[it->second];
    }
    void add(const std::string& name, MetricType type, const std::string& help,
             std::vector<ClientMetric::Label> labels, double value) {
        ClientMetric m;
        m.label = std::move(labels);
        if (type == MetricType::Counter) {
            m.counter.value = value;
        } else {
            m.gauge.value = value;
        }
        family(name, type, help).metric.push_back(std::move(m));
    }
    std::vector<MetricFamily> take() { return std::move(families_); }

  private:
    std::vector<MetricFamily> families_;
    std::map<std::string, size_t> index_;
};

using Labels = std::vector<ClientMetric::Label>;

void add_guest_metrics(Families& f, const VmSnapshot& s, const Labels& vm) {
    const auto g = MetricType::Gauge;
    f.add("cloudvmi_vm_up", g, "1 when the VM's tree could be read", vm, s.ok() ? 1 : 0);
    if (!s.ok()) return;
    f.add("cloudvmi_vm_load1", g, "Guest 1-minute load average", vm, s.load.load1);
    f.add("cloudvmi_vm_load5", g, "Guest 5-minute load average", vm, s.load.load5);
    f.add("cloudvmi_vm_load15", g, "Guest 15-minute load average", vm, s.load.load15);
    f.add("cloudvmi_vm_memory_total_bytes", g, "Guest MemTotal", vm,
          static_cast<double>(s.mem.total_kib) * 1024);
    f.add("cloudvmi_vm_memory_available_bytes", g, "Guest MemAvailable", vm,
          static_cast<double>(s.mem.available_kib) * 1024);
    f.add("cloudvmi_vm_processes", g, "Processes listed in the guest's /proc", vm,
          static_cast<double>(s.process_count));
    f.add("cloudvmi_vm_uptime_seconds", g, "Guest uptime", vm, s.uptime_s);
    Labels info = vm;
    info.push_back({"kernel", s.kernel});
    info.push_back({"hostname", s.hostname});
    f.add("cloudvmi_vm_info", g, "Guest kernel release and host name", info, 1);
}

void add_cloudvmi_metrics(Families& f, const VmRef& ref, const Labels& vm) {
    auto text = read_file(ref.path + "/.cloudvmi/stats.json", 1 << 20);
    auto j = text ? nlohmann::json::parse(*text, nullptr, false) : nlohmann::json();
    if (!j.is_object()) return;
    for (const auto& field : kStatsFields) {
        if (auto it = j.find(field.field); it != j.end() && it->is_number()) {
            f.add(field.metric, field.type, field.help, vm, it->get<double>() * field.scale);
        }
    }
    for (const auto& [field, quantile] : kLatencyFields) {
        if (auto it = j.find(field); it != j.end() && it->is_number()) {
            Labels q = vm;
            q.push_back({"quantile", quantile});
            f.add("cloudvmi_request_latency_seconds", MetricType::Gauge,
                  "Request latency quantiles over recent requests", q, it->get<double>() / 1000);
        }
    }
    Labels engine = vm;
    engine.push_back({"engine", j.value("engine", "")});
    engine.push_back({"state", j.value("state", "")});
    f.add("cloudvmi_engine_info", MetricType::Gauge, "The VM's injection engine and attach state",
          engine, 1);
}

// The fields of a `key: value` status file.
std::map<std::string, std::string> status_fields(const std::string& text) {
    std::map<std::string, std::string> out;
    for (auto line : split(text, '\n')) {
        auto colon = line.find(": ");
        if (colon != std::string_view::npos) {
            out.emplace(line.substr(0, colon), line.substr(colon + 2));
        }
    }
    return out;
}

void add_node_metrics(Families& f, const std::string& mount) {
    auto nodes = list_dir(mount);
    if (!nodes) return;
    for (const auto& node : *nodes) {
        if (node.starts_with(".")) continue;
        auto text = read_file(mount + "/" + node + "/.cloudvmi/status", 65536);
        if (!text) continue;
        auto fields = status_fields(*text);
        Labels labels{{"node", node}, {"kind", fields["kind"]}};
        f.add("cloudvmi_node_up", MetricType::Gauge, "1 when the node is connected", labels,
              fields["state"] == "connected" ? 1 : 0);
        if (auto rtt = fields.find("rtt_ms"); rtt != fields.end()) {
            char* end = nullptr;
            double v = std::strtod(rtt->second.c_str(), &end);
            if (end != rtt->second.c_str()) {
                f.add("cloudvmi_node_rtt_seconds", MetricType::Gauge,
                      "Round trip to the node's daemon", {{"node", node}}, v / 1000);
            }
        }
    }
}

class FleetCollector : public prometheus::Collectable {
  public:
    explicit FleetCollector(CommonOptions options) : options_(std::move(options)) {}

    std::vector<MetricFamily> Collect() const override {
        Families f;
        auto vms = list_vms(options_.mount, options_.vms);
        f.add("cloudvmi_mount_up", MetricType::Gauge, "1 when the mount could be listed",
              {{"mount", options_.mount}}, vms ? 1 : 0);
        if (!vms) return f.take();
        add_node_metrics(f, options_.mount);
        auto snapshots = take_snapshots(*vms, false);
        for (size_t i = 0; i < vms->size(); ++i) {
            Labels vm{{"node", (*vms)[i].node}, {"vm", (*vms)[i].name}};
            add_guest_metrics(f, snapshots[i], vm);
            add_cloudvmi_metrics(f, (*vms)[i], vm);
        }
        return f.take();
    }

  private:
    CommonOptions options_;
};

struct ExporterOptions {
    CommonOptions common;
    std::string listen = "127.0.0.1:9847";
    std::string textfile;
};

int write_textfile(const ExporterOptions& o, const FleetCollector& collector) {
    auto started = std::chrono::steady_clock::now();
    auto families = collector.Collect();
    Families own;
    own.add("cloudvmi_exporter_collect_seconds", MetricType::Gauge,
            "Time taken to read the tree for this file", {},
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    for (auto& f : own.take())
        families.push_back(std::move(f));
    std::string text = prometheus::TextSerializer().Serialize(families);
    // The collector reads *.prom files at any moment: write beside, then rename.
    std::string tmp = o.textfile + ".tmp." + std::to_string(::getpid());
    auto written = write_file(tmp, text, 0644);
    if (!written || ::rename(tmp.c_str(), o.textfile.c_str()) != 0) {
        std::cerr << "cloudvmi exporter: cannot write " << o.textfile << ": "
                  << (written ? std::strerror(errno) : written.error().describe()) << "\n";
        ::unlink(tmp.c_str());
        return kAppUnreachable;
    }
    return kAppOk;
}

int serve(const ExporterOptions& o, const std::shared_ptr<FleetCollector>& collector) {
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // before the exposer's threads start
    std::unique_ptr<prometheus::Exposer> exposer;
    try {
        exposer = std::make_unique<prometheus::Exposer>(o.listen, 2);
    } catch (const std::exception& e) {
        std::cerr << "cloudvmi exporter: cannot listen on " << o.listen << ": " << e.what() << "\n";
        return kAppUsage;
    }
    exposer->RegisterCollectable(collector);
    if (!o.common.quiet) {
        for (int port : exposer->GetListeningPorts()) {
            std::cerr << "cloudvmi exporter: serving http://"
                      << o.listen.substr(0, o.listen.rfind(':')) << ":" << port << "/metrics\n";
        }
    }
    int signal = 0;
    sigwait(&stop, &signal);
    return kAppOk;
}

}  // namespace

int exporter_main(int argc, char** argv) {
    ExporterOptions o;
    CLI::App app{
        "Prometheus metrics of every VM (load, memory, processes, uptime, kernel) and of "
        "CloudVMI (requests, errors, latency, engine, nodes), read from the /vmi tree "
        "at each scrape. Serves HTTP on --listen, or with --textfile writes one file "
        "for the node exporter's textfile collector and exits.",
        "cloudvmi exporter"};
    add_common_options(app, o.common, false);  // the exposition format is the output
    app.add_option("--listen", o.listen, "HOST:PORT to serve /metrics on (port 0: any free)")
        ->capture_default_str();
    app.add_option("--textfile", o.textfile, "write the metrics to this .prom file and exit");
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    auto collector = std::make_shared<FleetCollector>(o.common);
    if (!o.textfile.empty()) return write_textfile(o, *collector);
    return serve(o, collector);
}

}  // namespace cloudvmi::apps
