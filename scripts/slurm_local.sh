#!/usr/bin/env bash
# A one-node Slurm on this machine for tests and trials: `up` starts munged, slurmctld and slurmd on 127.0.0.1
# with a private configuration; `down` stops them and every job process they left; `env` prints SLURM_CONF.
#
# Usage: bash scripts/slurm_local.sh up|down|status|env
#   then: export SLURM_CONF=<dir>/slurm.conf   (printed by `up` and `env`; every Slurm client needs it)
# Settings (environment): SPECTRASCOPE_SLURM_DIR (state, default /tmp/spectrascope-slurm),
#   SPECTRASCOPE_SLURM_PORT (slurmctld's port, default 16817; slurmd takes the next one),
#   SPECTRASCOPE_SLURM_CPUS (CPUs the node offers, default max(nproc, 4): tiny test jobs may share cores).
# Needs Debian's slurm-wlm and munge (scripts/setup.sh --dev installs them) and root (SlurmUser=root).
# On a real cluster none of this is needed: Spectrascope uses the site's Slurm through sbatch/squeue/scancel.
set -euo pipefail

DIR=${SPECTRASCOPE_SLURM_DIR:-/tmp/spectrascope-slurm}
PORT=${SPECTRASCOPE_SLURM_PORT:-16817}
NODE=$(hostname -s)
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
export SLURM_CONF=$CONF

die() { echo "slurm_local: $*" >&2; exit 1; }

pid_alive() {  # pid file -> true when its process runs
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_config() {
  local cpus mem
  cpus=${SPECTRASCOPE_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
  mkdir -p "$DIR"/{munge,state,spool,log}
  chmod 700 "$DIR" "$DIR/munge"
  : > "$DIR/plugstack.conf"
  cat > "$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-node test cluster on 127.0.0.1 (not for production use).
ClusterName=spectrascope-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
# finished jobs stay visible to squeue/scontrol for 10 minutes (no accounting database, so no sacct)
MinJobAge=600
# a cancelled or timed-out job gets SIGTERM, then SIGKILL 2 s later
KillWait=2
InactiveLimit=0
# clients give up on a stopped controller after about this many seconds (the default 10 is slow for tests)
MessageTimeout=5
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/cgroup.conf" <<EOF
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
}

start_munge() {
  pid_alive "$DIR/munged.pid" && return 0
  [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null \
    || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 600 "$DIR/munge/munge.key"
  munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
}

wait_idle() {
  local state=""
  for _ in $(seq 1 100); do
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    case "$state" in
      idle|mix|alloc) return 0 ;;
      down*|drain*|drng*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.3
  done
  die "node $NODE is not idle after 30 s (state '${state:-none}'); see $DIR/log/"
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (SlurmUser=root); on a real cluster use the site's Slurm instead"
  command -v slurmctld >/dev/null && command -v munged >/dev/null \
    || die "slurmctld / munged not installed: apt-get install slurm-wlm munge (scripts/setup.sh --dev)"
  if ! pid_alive "$DIR/slurmctld.pid" || ! pid_alive "$DIR/slurmd.pid"; then
    write_config
  fi
  start_munge
  # -i: ignore state left by an earlier cluster in $DIR (its jobs are gone)
  pid_alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF" -i
  pid_alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
  wait_idle
  echo "export SLURM_CONF=$CONF"
}

descendants() {  # pid -> that process's children, grandchildren, …
  local child
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

leftovers() {  # slurmstepd processes of this cluster (started by its slurmd: SLURM_CONF=$CONF) and their children
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = slurmstepd ] || continue
    if tr '\0' '\n' 2>/dev/null < /proc/"$p"/environ | grep -qxF "SLURM_CONF=$CONF"; then
      echo "$p"
      descendants "$p"
    fi
  done | sort -u
}

stop_pidfile() {  # pid file -> TERM, then KILL after 5 s
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

down() {
  local jobs pids
  if pid_alive "$DIR/slurmctld.pid"; then           # cancel every job first, so each step ends cleanly
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  stop_pidfile "$DIR/slurmd.pid"
  stop_pidfile "$DIR/slurmctld.pid"
  pids=$(leftovers)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    sleep 1
    pids=$(leftovers)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  fi
  stop_pidfile "$DIR/munged.pid"
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    if pid_alive "$DIR/$name.pid"; then echo "$name running (pid $(cat "$DIR/$name.pid"))"; else echo "$name stopped"; fi
  done
  pid_alive "$DIR/slurmctld.pid" && sinfo || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 up|down|status|env" ;;
esac
