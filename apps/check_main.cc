// check_cloudvmi: the Nagios/Icinga plugin (see check_cloudvmi(1)).
#include "apps/apps.h"

int main(int argc, char** argv) {
    return cloudvmi::apps::check_main(argc, argv);
}
