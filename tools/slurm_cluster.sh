#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `make slurm-test`: munged, slurmctld and slurmd on localhost, one
# partition `debug`, no accounting. Everything (configuration, key, sockets, state, logs) lives in one folder,
# $CLAD_SLURM_DIR (default /tmp/clad-slurm), so the system's own Slurm or munge set-up is never touched.
#
#   tools/slurm_cluster.sh start    start the daemons and wait until the node is idle; prints `export SLURM_CONF=...`
#   tools/slurm_cluster.sh stop     stop the daemons started by `start` (by their pid files) and remove the folder
#   tools/slurm_cluster.sh status   sinfo of the cluster
#
# Runs as root (slurmd must). Needs the Debian packages slurm-wlm and munge.
set -euo pipefail

DIR=${CLAD_SLURM_DIR:-/tmp/clad-slurm}
CONF=$DIR/slurm.conf
CPUS=${CLAD_SLURM_CPUS:-$(nproc)}
MEM_MB=${CLAD_SLURM_MEM_MB:-2000}   # what slurmd declares; memory is not a scheduled resource here (CR_CPU)
PORT=${CLAD_SLURM_PORT:-16817}      # slurmctld; slurmd uses PORT+1 (not the default ports, to stay out of a real set-up's way)
HOST=$(hostname -s)

die() { echo "slurm_cluster: $*" >&2; exit 1; }

stop_pid() {  # stop the daemon whose pid file is $1 (only that process), waiting for it to exit
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

start() {
    for exe in munged mungekey slurmctld slurmd sinfo; do
        command -v $exe >/dev/null || die "$exe not found: install the Debian packages (apt-get install slurm-wlm munge)"
    done
    [ "$(id -u)" = 0 ] || die "run as root (slurmd must)"
    if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
        die "a cluster is already running in $DIR (tools/slurm_cluster.sh stop first)"
    fi
    if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -f "$CONF" ]; then die "$DIR is not empty and holds no cluster of this script"; fi
    rm -rf "$DIR"; mkdir -p "$DIR"/{state,spool,munge}; chmod 700 "$DIR" "$DIR/munge"
    mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null
    chmod 600 "$DIR/munge/munge.key"
    munged --force --socket="$DIR/munge/socket" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
           --log-file="$DIR/munged.log" --seed-file="$DIR/munge/seed"
    cat > "$CONF" <<EOF
ClusterName=clad
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MinJobAge=60
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$CONF
    slurmctld -f "$CONF" || die "slurmctld did not start; see $DIR/slurmctld.log"
    slurmd -f "$CONF" || die "slurmd did not start; see $DIR/slurmd.log"
    for _ in $(seq 60); do
        state=$(sinfo -h -o %T 2>/dev/null || true)
        [ "$state" = idle ] && { echo "export SLURM_CONF=$CONF"; return 0; }
        sleep 0.5
    done
    die "the node did not become idle (state '${state:-none}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
}

stop() {
    [ -d "$DIR" ] || return 0
    if [ -f "$CONF" ] && [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
        # cancel what is left first: job steps outlive slurmd, and their processes with them
        export SLURM_CONF=$CONF
        ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${ids// }" ]; then
            scancel $ids 2>/dev/null || true
            for _ in $(seq 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
        fi
    fi
    stop_pid "$DIR/slurmd.pid"; stop_pid "$DIR/slurmctld.pid"; stop_pid "$DIR/munged.pid"
    if [ -f "$CONF" ]; then rm -rf "$DIR"; fi  # only a folder this script wrote
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF=$CONF sinfo ;;
    *) die "usage: $0 start|stop|status" ;;
esac
