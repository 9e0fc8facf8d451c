#!/bin/bash
# Fails when a source file includes a header from a layer above its own, or from a layer it
# must not see (fs/ sees the session, never registers or the shadow). The order is the one
# of redirector/CMakeLists.txt; a layer may include its own folder and any layer below.
#   usage: scripts/check-layers.sh [SOURCE_DIR]
set -u
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2

# layer -> rank. Same rank: siblings, which must not include each other.
declare -A rank=(
  [common]=0
  [redirector/gdb]=1 [redirector/x86]=1
  [redirector/guest]=2 [redirector/journal]=2
  [redirector/inject]=3
  [redirector/shadow]=4
  [redirector/engines]=5 [redirector/recovery]=5
  [redirector/session]=6
  [policy]=1
  [nodes]=1
  [remote]=1
  [apps]=1
  [fs]=7
)
# What fs/ may include from the redirector: the session, the endpoint syntax it checks in
# the configuration, and the run-state interface a libvirt node implements for its VMs.
fs_allowed='^redirector/(session/|gdb/rsp_connection\.h$|guest/vm_run_state\.h$)'

layer_of() {
  local path=$1 best=""
  for layer in "${!rank[@]}"; do
    if [[ $path == "$layer"/* && ${#layer} -gt ${#best} ]]; then best=$layer; fi
  done
  echo "$best"
}

status=0
while IFS= read -r file; do
  from=$(layer_of "$file")
  [[ -z $from ]] && continue
  while IFS= read -r inc; do
    to=$(layer_of "$inc")
    [[ -z $to || $to == "$from" ]] && continue
    if [[ $from == fs ]]; then
      if [[ $inc == redirector/* && ! $inc =~ $fs_allowed ]]; then
        echo "$file: fs/ must not include $inc (only the session API)"
        status=1
      fi
      continue
    fi
    if (( ${rank[$to]} >= ${rank[$from]} )); then
      echo "$file ($from) includes $inc ($to): not a layer below"
      status=1
    fi
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$file")
done < <(git ls-files 'common/*' 'redirector/*' 'policy/*' 'nodes/*' 'remote/*' 'apps/*' 'fs/*' | grep -E '\.(h|cc|S)$')
[[ $status == 0 ]] && echo "layers: every include goes down"
exit $status
