#!/bin/bash
# launch-guest.sh - start/stop CloudVMI test guests under QEMU, and pick TCG or KVM.
# See usage() and README.md next to this file.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=${0##*/}
QEMU=${QEMU:-qemu-system-x86_64}
BUILD=$SELF_DIR/build-guest.sh
BUILD_DEBIAN=$SELF_DIR/build-debian-guest.sh
DEFAULT_CPU='qemu64,vendor=GenuineIntel'
# QEMU before 8.1 computes RFLAGS after a TCG cmpxchg16b from a stale flags state (its
# helper reads the lazily kept condition-code op without syncing it first): RFLAGS can come
# back as a register value, TF and all. Debian 13's slab allocator runs cmpxchg16b constantly
# and double-faulted one boot in four. Under TCG the default CPU hides CX16 from such QEMUs;
# the kernel then uses its own emulation. A --cpu given by the caller is used as it is.
TCG_CX16_FIXED_IN=8.1
READY_MARK=CLOUDVMI-GUEST-READY

usage() {
    cat <<EOF
Usage:
  $PROG start --name NAME --dir RUNDIR [--image busybox|debian]
               [--release bullseye|bookworm|trixie|sid]
               [--flavour generic|cloud|rt] [--append "EXTRA"]
               [--smp N] [--mem MB] [--accel auto|kvm|tcg] [--cpu MODEL]
               [--timeout SECONDS] [--hostname NAME] [--ssh-port PORT] [--cache DIR]
               [--allow-reboot]
  $PROG stop --name NAME --dir RUNDIR [--timeout SECONDS]
  $PROG ssh --name NAME --dir RUNDIR [--] [COMMAND...]
  $PROG qga --name NAME --dir RUNDIR [--timeout SECONDS] ['JSON']
  $PROG detect-accel [--release R] [--flavour F] [--cpu MODEL] [--cache DIR] [--force]
  $PROG help

start         builds/locates the guest kit (build-guest.sh), starts qemu-system-x86_64
              daemonized with its gdbstub, QMP and serial console under RUNDIR:
                RUNDIR/NAME.gdb (gdbstub socket)   RUNDIR/NAME.qmp (QMP socket)
                RUNDIR/NAME.vmi.qmp (a second QMP socket, cloudvmi's own)
                RUNDIR/NAME.serial (console log)   RUNDIR/NAME.pid (QEMU pid)
              waits until the guest prints $READY_MARK and prints sourceable lines:
                GDB=unix:RUNDIR/NAME.gdb QMP=RUNDIR/NAME.qmp VMI_QMP=RUNDIR/NAME.vmi.qmp
                SERIAL=... PID=... ACCEL=tcg|kvm
                (plus NAME, RUNDIR, FLAVOUR, RELEASE, KERNEL_VERSION, BOOT_SECONDS)
              (plus IMAGE, CPU, and for debian SSH_PORT, SSH_KEY, QGA)
              Defaults: --image busybox --release bookworm --flavour generic --smp 1
                        --mem 512 --accel auto --cpu $DEFAULT_CPU --timeout 120
              Under TCG with QEMU older than $TCG_CX16_FIXED_IN the default CPU also hides CX16
              (",-cx16"): those QEMUs can corrupt RFLAGS after cmpxchg16b, which the guest
              kernel uses in its slab allocator (Debian 13 guests double-faulted).
              --release picks the Debian release whose kernel the busybox guest boots
              (bullseye 5.10, bookworm 6.1, trixie 6.12, sid: unstable's); see build-guest.sh.
              The kernel command line is "console=ttyS0 quiet panic=-1 [cloudvmi.hostname=H] EXTRA".
              --image debian boots the Debian 12 systemd guest (build-debian-guest.sh) from a
              fresh qcow2 overlay RUNDIR/NAME.qcow2 on virtio-blk, with a virtio NIC (QEMU user
              networking, guest port 22 forwarded to 127.0.0.1:SSH_PORT, a free port unless
              --ssh-port) and qemu-guest-agent on RUNDIR/NAME.qga. Defaults there: --mem 1024
              --timeout 240; command line "console=ttyS0 root=/dev/vda rootfstype=ext4 rw quiet
              panic=-1 [systemd.hostname=H] EXTRA". --flavour does not apply; --release
              picks the image: bookworm (Debian 12, default) or trixie (Debian 13).
              --allow-reboot: a guest reboot (or QMP system_reset) restarts the guest inside
              the same QEMU instead of ending QEMU (-no-reboot, the default).
              On failure or timeout the tail of the console log is shown, QEMU is killed, exit 1.
stop          asks QEMU to quit over QMP, then SIGTERM, then SIGKILL (default timeout 10 s);
              removes the sockets, the pidfile and the overlay (the serial log is kept).
              Exit 0 if gone.
ssh           (debian) runs COMMAND (or a login shell) as root in the guest:
                ssh -i SSH_KEY -p SSH_PORT -o StrictHostKeyChecking=no
                    -o UserKnownHostsFile=/dev/null -o BatchMode=yes root@127.0.0.1 COMMAND
qga           (debian) sends one JSON command (default {"execute":"guest-ping"}) to
              qemu-guest-agent after a guest-sync, prints the reply line; exit 1 on an error
              reply or no reply within --timeout (default 30 s).
detect-accel  prints kvm if KVM really boots this guest kernel here, else tcg. The verdict
              (a short boot under -accel kvm that must print "Linux version" and get through
              kernel init) is cached per kernel version, host kernel and CPU model.

Environment: QEMU (emulator binary, default qemu-system-x86_64), CLOUDVMI_CACHE (cache root).
Exit status: 0 success, 1 failure, 2 bad usage.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
bad_usage() { echo "$PROG: $*" >&2; echo "Try '$PROG help'." >&2; exit 2; }
need_arg() { [ "$2" -ge 2 ] || bad_usage "option $1 needs a value"; }

q() { printf '%s=%q\n' "$1" "$2"; }

alive() {   # running, not a zombie
    local pid=$1 st
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# Is PID the QEMU that owns RUNDIR/NAME.pid? (guards against pid reuse)
is_our_qemu() {
    local pid=$1 pidfile=$2
    alive "$pid" || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$pidfile"
}

wait_gone() {   # pid seconds
    local pid=$1 n=$(( $2 * 10 ))
    while [ $n -gt 0 ]; do
        alive "$pid" || return 0
        sleep 0.1
        n=$((n - 1))
    done
    ! alive "$pid"
}

check_name() {
    [ -n "$1" ] || bad_usage "--name is required"
    case $1 in *[!A-Za-z0-9._-]*|.*) bad_usage "invalid --name '$1' (use letters, digits, . _ -)" ;; esac
}

check_release() {
    case $1 in bullseye|bookworm|trixie|sid) ;;
        *) bad_usage "unknown release '$1' (bullseye, bookworm, trixie or sid)" ;; esac
}

# ---------------------------------------------------------------- detect-accel
kvm_usable() { [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; }

# detect_accel KERNEL KERNEL_VERSION CPU FORCE -> prints kvm|tcg
# The caller passes the kernel it boots, so the probe judges that very kernel and
# build-guest.sh runs once per start.
detect_accel() {
    local kernel=$1 kernel_version=$2 cpu=$3 force=$4
    kvm_usable || { echo tcg; return 0; }
    local key verdict_file
    key="kernel=$kernel_version host=$(uname -r) cpu=$cpu qemu=$("$QEMU" --version 2>/dev/null | head -n1 | tr -dc 'A-Za-z0-9.:+~ -')"
    verdict_file=$(dirname "$kernel")/accel.$(printf '%s' "$key" | cksum | cut -d' ' -f1)
    cached_verdict() {
        local v=
        [ -f "$verdict_file" ] && read -r v <"$verdict_file" 2>/dev/null
        case $v in kvm|tcg) echo "$v"; return 0 ;; esac
        return 1
    }
    if [ "$force" = 0 ]; then cached_verdict && return 0; fi
    # one probe at a time (guests are often started in parallel)
    exec 8>"$verdict_file.lock"
    command -v flock >/dev/null 2>&1 && flock 8
    if [ "$force" = 0 ]; then cached_verdict && { exec 8>&-; return 0; }; fi
    local tmp qpid verdict=tcg t=0 limit=${CLOUDVMI_KVM_PROBE_TIMEOUT:-8}
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/cloudvmi-kvmprobe.XXXXXX")
    # No initrd: a kernel that really runs prints its banner (earlyprintk) and gets all
    # the way to "VFS: Unable to mount root fs" + panic within a second or two under KVM.
    "$QEMU" -accel kvm -cpu "$cpu" -m 256 -smp 1 -nodefaults -display none -no-reboot \
        -kernel "$kernel" -append "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=7" \
        -serial "file:$tmp/serial" </dev/null >"$tmp/qemu.out" 2>&1 &
    qpid=$!
    booted() {
        grep -q 'Linux version' "$tmp/serial" 2>/dev/null &&
        grep -qE 'Unable to mount root|Kernel panic|Run /init|Freeing unused kernel' "$tmp/serial" 2>/dev/null
    }
    while [ $t -lt $((limit * 10)) ]; do
        if booted; then verdict=kvm; break; fi
        if ! kill -0 "$qpid" 2>/dev/null; then
            booted && verdict=kvm   # it may have panicked and exited meanwhile
            break
        fi
        sleep 0.1
        t=$((t + 1))
    done
    kill -KILL "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    if [ "$verdict" = tcg ] && [ -n "${CLOUDVMI_DEBUG:-}" ]; then
        { echo "$PROG: KVM probe failed; qemu said:"; cat "$tmp/qemu.out"
          echo "--- serial:"; head -c 2000 "$tmp/serial" 2>/dev/null; echo; } >&2
    fi
    rm -rf "$tmp"
    printf '%s\n%s\n' "$verdict" "$key" >"$verdict_file.new" && mv -f "$verdict_file.new" "$verdict_file"
    exec 8>&-
    echo "$verdict"
}

cmd_detect_accel() {
    local flavour=generic release=bookworm cpu=$DEFAULT_CPU cache='' force=0
    while [ $# -gt 0 ]; do
        case $1 in
            --flavour|--flavor) need_arg "$1" $#; flavour=$2; shift 2 ;;
            --release) need_arg "$1" $#; release=$2; shift 2 ;;
            --cpu) need_arg "$1" $#; cpu=$2; shift 2 ;;
            --cache) need_arg "$1" $#; cache=$2; shift 2 ;;
            --force) force=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) bad_usage "detect-accel: unknown argument: $1" ;;
        esac
    done
    case $flavour in generic|cloud|rt) ;; *) bad_usage "unknown flavour '$flavour'" ;; esac
    check_release "$release"
    # Without KVM the answer needs no kernel, so no kit is built for it.
    kvm_usable || { echo tcg; return 0; }
    local kit KERNEL KERNEL_VERSION
    kit=$("$BUILD" --quiet --print --release "$release" --flavour "$flavour" ${cache:+--cache "$cache"}) ||
        die "cannot build the guest kit (build-guest.sh --release $release --flavour $flavour)"
    eval "$kit"
    detect_accel "$KERNEL" "$KERNEL_VERSION" "$cpu" "$force"
}

# ---------------------------------------------------------------- stop
stop_guest() {   # rundir name timeout -> 0 if gone
    local dir=$1 name=$2 timeout=$3
    local pidfile=$dir/$name.pid qmp=$dir/$name.qmp pid=
    [ -f "$pidfile" ] && read -r pid <"$pidfile" 2>/dev/null || true
    if [ -n "$pid" ] && is_our_qemu "$pid" "$pidfile"; then
        if [ -S "$qmp" ] && command -v socat >/dev/null 2>&1; then
            printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' |
                timeout 5 socat -t 3 - "UNIX-CONNECT:$qmp" >/dev/null 2>&1 || true
        fi
        if ! wait_gone "$pid" "$timeout"; then
            echo "$PROG: $name: QMP quit did not stop QEMU (pid $pid), sending SIGTERM" >&2
            kill -TERM "$pid" 2>/dev/null || true
            if ! wait_gone "$pid" 3; then
                echo "$PROG: $name: sending SIGKILL to pid $pid" >&2
                kill -KILL "$pid" 2>/dev/null || true
                wait_gone "$pid" 3 || true
            fi
        fi
        if alive "$pid"; then
            echo "$PROG: $name: QEMU pid $pid is still running" >&2
            return 1
        fi
    fi
    rm -f "$dir/$name.gdb" "$qmp" "$dir/$name.vmi.qmp" "$pidfile" "$dir/$name.qemu.err" \
        "$dir/$name.qcow2" "$dir/$name.qga" "$dir/$name.ssh"
    return 0
}

cmd_stop() {
    local name='' dir='' timeout=10
    while [ $# -gt 0 ]; do
        case $1 in
            --name) need_arg "$1" $#; name=$2; shift 2 ;;
            --dir) need_arg "$1" $#; dir=$2; shift 2 ;;
            --timeout) need_arg "$1" $#; timeout=$2; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) bad_usage "stop: unknown argument: $1" ;;
        esac
    done
    check_name "$name"
    [ -n "$dir" ] || bad_usage "--dir is required"
    case $timeout in ''|*[!0-9]*) bad_usage "--timeout must be a number of seconds" ;; esac
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    stop_guest "$dir" "$name" "$timeout"
}

# ---------------------------------------------------------------- start
# A TCP port on which nothing listens (QEMU's hostfwd may still lose a race: start retries).
port_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 }
                      END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
pick_port() {
    local p _
    for _ in $(seq 1 200); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        port_listening "$p" || { echo "$p"; return 0; }
    done
    return 1
}

# True when $QEMU's version is below $1 (major.minor).
qemu_older_than() {
    local v
    v=$("$QEMU" --version 2>/dev/null | sed -n '1s/^QEMU emulator version \([0-9]*\.[0-9]*\).*/\1/p')
    [ -n "$v" ] || return 1
    [ "$(printf '%s\n%s\n' "$v" "$1" | sort -V | head -n1)" = "$v" ] && [ "$v" != "$1" ]
}

cmd_start() {
    local name='' dir='' flavour=generic extra='' smp=1 mem='' accel=auto cpu=$DEFAULT_CPU
    local cpu_set=0 timeout='' ghost='' cache='' image=busybox flavour_set=0 ssh_port='' reboot_flag=-no-reboot
    local release=bookworm release_set=0
    while [ $# -gt 0 ]; do
        case $1 in
            --name) need_arg "$1" $#; name=$2; shift 2 ;;
            --dir) need_arg "$1" $#; dir=$2; shift 2 ;;
            --image) need_arg "$1" $#; image=$2; shift 2 ;;
            --ssh-port) need_arg "$1" $#; ssh_port=$2; shift 2 ;;
            --flavour|--flavor) need_arg "$1" $#; flavour=$2; flavour_set=1; shift 2 ;;
            --release) need_arg "$1" $#; release=$2; release_set=1; shift 2 ;;
            --append) need_arg "$1" $#; extra="$extra $2"; shift 2 ;;
            --smp) need_arg "$1" $#; smp=$2; shift 2 ;;
            --mem) need_arg "$1" $#; mem=$2; shift 2 ;;
            --accel) need_arg "$1" $#; accel=$2; shift 2 ;;
            --cpu) need_arg "$1" $#; cpu=$2; cpu_set=1; shift 2 ;;
            --timeout) need_arg "$1" $#; timeout=$2; shift 2 ;;
            --hostname) need_arg "$1" $#; ghost=$2; shift 2 ;;
            --allow-reboot) reboot_flag=; shift ;;
            --cache) need_arg "$1" $#; cache=$2; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) bad_usage "start: unknown argument: $1" ;;
        esac
    done
    check_name "$name"
    [ -n "$dir" ] || bad_usage "--dir is required"
    case $image in busybox|debian) ;; *) bad_usage "--image must be busybox or debian" ;; esac
    case $flavour in generic|cloud|rt) ;; *) bad_usage "unknown flavour '$flavour' (generic, cloud or rt)" ;; esac
    check_release "$release"
    if [ "$image" = debian ]; then
        [ "$flavour_set" = 0 ] || [ "$flavour" = generic ] ||
            bad_usage "--flavour applies to --image busybox only (debian boots its own kernel)"
        case $release in bookworm|trixie) ;;
            *) bad_usage "no Debian image for release '$release' (--image debian: bookworm or trixie)" ;; esac
        [ -n "$mem" ] || mem=1024
        [ -n "$timeout" ] || timeout=240
        case $ssh_port in ''|[1-9]|[1-9][0-9]|[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9]|[1-6][0-9][0-9][0-9][0-9]) ;;
            *) bad_usage "--ssh-port must be a TCP port number" ;; esac
    else
        [ -z "$ssh_port" ] || bad_usage "--ssh-port applies to --image debian only"
        [ -n "$mem" ] || mem=512
        [ -n "$timeout" ] || timeout=120
    fi
    case $accel in auto|kvm|tcg) ;; *) bad_usage "--accel must be auto, kvm or tcg" ;; esac
    case $smp in ''|*[!0-9]*|0) bad_usage "--smp must be a positive number" ;; esac
    case $mem in ''|*[!0-9]*) bad_usage "--mem must be a number of MiB" ;; esac
    case $timeout in ''|*[!0-9]*) bad_usage "--timeout must be a number of seconds" ;; esac
    case $ghost in *[!A-Za-z0-9.-]*) bad_usage "invalid --hostname '$ghost'" ;; esac
    command -v "$QEMU" >/dev/null 2>&1 || die "$QEMU not found (apt-get install qemu-system-x86)"

    mkdir -p "$dir" || die "cannot create $dir"
    dir=$(cd "$dir" && pwd)
    local gdb=$dir/$name.gdb qmp=$dir/$name.qmp serial=$dir/$name.serial pidfile=$dir/$name.pid
    local vmi_qmp=$dir/$name.vmi.qmp
    local err=$dir/$name.qemu.err overlay=$dir/$name.qcow2 qga=$dir/$name.qga sshinfo=$dir/$name.ssh
    [ ${#vmi_qmp} -lt 100 ] ||
        die "socket path $vmi_qmp is too long for a unix socket (use a shorter --dir)"

    local oldpid=
    [ -f "$pidfile" ] && read -r oldpid <"$pidfile" 2>/dev/null || true
    if [ -n "$oldpid" ] && is_our_qemu "$oldpid" "$pidfile"; then
        die "guest '$name' is already running in $dir (pid $oldpid); stop it first"
    fi

    local kit KERNEL INITRD KERNEL_VERSION
    local DEBIAN_IMAGE DEBIAN_KERNEL DEBIAN_INITRD DEBIAN_KERNEL_VERSION DEBIAN_SSH_KEY
    if [ "$image" = debian ]; then
        command -v qemu-img >/dev/null 2>&1 || die "qemu-img not found (apt-get install qemu-utils)"
        # not --quiet: a first build takes minutes, its progress goes to stderr
        kit=$("$BUILD_DEBIAN" --print --release "$release" ${cache:+--cache "$cache"}) ||
            die "cannot build the Debian guest (build-debian-guest.sh --release $release)"
        eval "$kit"
        KERNEL=$DEBIAN_KERNEL INITRD=$DEBIAN_INITRD KERNEL_VERSION=$DEBIAN_KERNEL_VERSION
    else
        kit=$("$BUILD" --quiet --print --release "$release" --flavour "$flavour" ${cache:+--cache "$cache"}) ||
            die "cannot build the guest kit (build-guest.sh --release $release --flavour $flavour)"
        eval "$kit"
    fi

    case $accel in
        auto) accel=$(detect_accel "$KERNEL" "$KERNEL_VERSION" "$cpu" 0) ;;
        kvm) [ -c /dev/kvm ] && [ -w /dev/kvm ] || die "--accel kvm: /dev/kvm is not usable" ;;
    esac
    if [ "$accel" = tcg ] && [ "$cpu_set" = 0 ] && qemu_older_than "$TCG_CX16_FIXED_IN"; then
        cpu="$cpu,-cx16"
    fi

    rm -f "$gdb" "$qmp" "$vmi_qmp" "$serial" "$pidfile" "$err" "$overlay" "$qga" "$sshinfo"
    local append
    if [ "$image" = debian ]; then
        append="console=ttyS0 root=/dev/vda rootfstype=ext4 rw quiet panic=-1"
        [ -z "$ghost" ] || append="$append systemd.hostname=$ghost"
    else
        append="console=ttyS0 quiet panic=-1"
        [ -z "$ghost" ] || append="$append cloudvmi.hostname=$ghost"
    fi
    extra=${extra# }
    [ -z "$extra" ] || append="$append $extra"

    local t0 t1 port='' tries=0
    local -a dev=()
    t0=$(date +%s%N)
    while :; do
        dev=()
        if [ "$image" = debian ]; then
            port=$ssh_port
            [ -n "$port" ] || port=$(pick_port) || die "no free TCP port found for ssh"
            rm -f "$overlay" "$qga"
            qemu-img create -q -f qcow2 -F raw -b "$DEBIAN_IMAGE" "$overlay" >"$err" 2>&1 || {
                cat "$err" >&2; die "qemu-img create $overlay failed"; }
            # option values are comma-separated: a comma in a path is written ",,"
            # shellcheck disable=SC2054
            dev=(-drive "file=${overlay//,/,,},format=qcow2,if=virtio,cache=unsafe"
                 -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22"
                 -device virtio-net-pci,netdev=n0
                 -chardev "socket,path=${qga//,/,,},server=on,wait=off,id=qga0"
                 -device virtio-serial
                 -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
                 -device virtio-rng-pci)
        fi
        if "$QEMU" -name "$name" -accel "$accel" -cpu "$cpu" -smp "$smp" -m "$mem" \
                -kernel "$KERNEL" -initrd "$INITRD" -append "$append" \
                -gdb "unix:$gdb,server=on,wait=off" \
                -qmp "unix:$qmp,server=on,wait=off" \
                -qmp "unix:$vmi_qmp,server=on,wait=off" \
                -serial "file:$serial" \
                "${dev[@]}" \
                -pidfile "$pidfile" -display none -nodefaults $reboot_flag -daemonize \
                </dev/null >"$err" 2>&1; then
            break
        fi
        tries=$((tries + 1))
        # lost the race for the port we picked: pick another one
        if [ "$image" = debian ] && [ -z "$ssh_port" ] && [ $tries -lt 5 ] &&
           grep -qiE 'hostfwd|host forwarding' "$err"; then
            continue
        fi
        cat "$err" >&2
        rm -f "$gdb" "$qmp" "$vmi_qmp" "$pidfile" "$overlay" "$qga"
        die "QEMU failed to start guest '$name'"
    done
    [ "$image" != debian ] || printf '%s\n%s\n' "$port" "$DEBIAN_SSH_KEY" >"$sshinfo"
    local pid=
    [ -f "$pidfile" ] && read -r pid <"$pidfile" 2>/dev/null || true
    [ -n "$pid" ] || die "QEMU started but wrote no pidfile $pidfile"

    local n=$((timeout * 10)) why=
    while :; do
        if grep -q "$READY_MARK" "$serial" 2>/dev/null; then break; fi
        if ! alive "$pid"; then why="QEMU exited before the guest was ready"; break; fi
        if [ $n -le 0 ]; then why="timed out after ${timeout}s waiting for $READY_MARK"; break; fi
        sleep 0.1
        n=$((n - 1))
    done
    if [ -n "$why" ]; then
        {
            echo "$PROG: error: guest '$name' ($image, $release, $flavour, $accel): $why"
            echo "---- last lines of $serial:"
            if [ -s "$serial" ]; then tail -n 40 "$serial" | tr -d '\r'; else echo "(nothing)"; fi
            [ -s "$err" ] && { echo "---- QEMU stderr:"; cat "$err"; }
            echo "----"
        } >&2
        stop_guest "$dir" "$name" 2 >/dev/null 2>&1 || true
        exit 1
    fi
    t1=$(date +%s%N)
    [ -s "$err" ] || rm -f "$err"

    q GDB "unix:$gdb"
    q QMP "$qmp"
    q VMI_QMP "$vmi_qmp"
    q SERIAL "$serial"
    q PID "$pid"
    q ACCEL "$accel"
    q CPU "$cpu"
    q NAME "$name"
    q RUNDIR "$dir"
    q FLAVOUR "$flavour"
    q RELEASE "$release"
    q KERNEL_VERSION "$KERNEL_VERSION"
    q BOOT_SECONDS "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')"
    q IMAGE "$image"
    if [ "$image" = debian ]; then
        q SSH_PORT "$port"
        q SSH_KEY "$DEBIAN_SSH_KEY"
        q QGA "$qga"
    fi
}

# ---------------------------------------------------------------- ssh / qga (debian)
parse_guest_args() {   # sets name, dir; leaves the rest in REST
    REST=()
    while [ $# -gt 0 ]; do
        case $1 in
            --name) need_arg "$1" $#; name=$2; shift 2 ;;
            --dir) need_arg "$1" $#; dir=$2; shift 2 ;;
            --timeout) need_arg "$1" $#; timeout=$2; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            --) shift; REST=("$@"); break ;;
            -*) bad_usage "unknown argument: $1" ;;
            *) REST=("$@"); break ;;
        esac
    done
    check_name "$name"
    [ -n "$dir" ] || bad_usage "--dir is required"
    case $timeout in ''|*[!0-9]*) bad_usage "--timeout must be a number of seconds" ;; esac
}

cmd_ssh() {
    local name='' dir='' timeout=10 port='' key=''
    parse_guest_args "$@"
    { read -r port && read -r key; } 2>/dev/null <"$dir/$name.ssh" ||
        die "no ssh endpoint for guest '$name' in $dir (not a running debian guest?)"
    exec ssh -i "$key" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout="$timeout" root@127.0.0.1 "${REST[@]}"
}

cmd_qga() {
    local name='' dir='' timeout=30 json line id ok=0
    parse_guest_args "$@"
    [ ${#REST[@]} -le 1 ] || bad_usage "qga: one JSON command (quote it)"
    json=${REST[0]:-'{"execute":"guest-ping"}'}
    local sock=$dir/$name.qga
    [ -S "$sock" ] || die "no guest agent socket $sock (not a running debian guest?)"
    command -v socat >/dev/null 2>&1 || die "socat not found (apt-get install socat)"
    coproc QGA_CONN { exec socat - "UNIX-CONNECT:$sock" 2>/dev/null; }
    local in=${QGA_CONN[0]} out=${QGA_CONN[1]} cpid=$QGA_CONN_PID
    # guest-sync first: skips any stale reply left in the channel by an earlier client
    id=$(( (RANDOM * 32768 + RANDOM) % 1000000000 + 1 ))
    { printf '{"execute":"guest-sync","arguments":{"id":%d}}\n' "$id" >&"$out"; } 2>/dev/null || true
    while read -r -t "$timeout" line <&"$in"; do
        case $line in *'"return"'*[!0-9]"$id}"*|*'"return"'*[!0-9]"$id }"*) ok=1; break ;; esac
    done
    if [ $ok = 1 ]; then
        printf '%s\n' "$json" >&"$out"
        read -r -t "$timeout" line <&"$in" || ok=0
    fi
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    [ $ok = 1 ] || die "no answer from qemu-ga on $sock within ${timeout}s"
    printf '%s\n' "$line"
    case $line in *'"error"'*) return 1 ;; esac
    return 0
}

# ---------------------------------------------------------------- main
[ $# -gt 0 ] || { usage >&2; exit 2; }
sub=$1; shift
case $sub in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    ssh) cmd_ssh "$@" ;;
    qga) cmd_qga "$@" ;;
    detect-accel) cmd_detect_accel "$@" ;;
    help|-h|--help) usage ;;
    *) bad_usage "unknown command '$sub'" ;;
esac
