// The management applications, each a `cloudvmi` subcommand built on the /vmi tree alone.
// argv[0] is the subcommand's name.
#pragma once

namespace cloudvmi::apps {

int top_main(int argc, char** argv);       // cloudvmi top: the fleet overview
int ps_main(int argc, char** argv);        // cloudvmi ps: a guest's processes
int find_main(int argc, char** argv);      // cloudvmi find: processes across VMs, signals
int state_main(int argc, char** argv);     // cloudvmi state diff|apply: desired state
int secmon_main(int argc, char** argv);    // cloudvmi secmon baseline|check: security monitor
int exporter_main(int argc, char** argv);  // cloudvmi exporter: Prometheus metrics
int check_main(int argc, char** argv);     // check_cloudvmi: Nagios/Icinga plugin

}  // namespace cloudvmi::apps
