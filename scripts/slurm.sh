#!/usr/bin/env bash
# A one-node Slurm with fake GPUs, for tests and for trying executor="slurm" out.
#
#   scripts/slurm.sh up   [DIR]   install slurm-wlm + munge if missing (apt-get), write
#                                 DIR/slurm.conf and DIR/gres.conf (4 GPUs as device files,
#                                 16 shards), start munged, slurmctld and slurmd (each under
#                                 setsid, its pid in DIR/pids/) and wait for `sinfo` idle
#   scripts/slurm.sh down [DIR]   cancel every job, stop the daemons by their pids, and
#                                 check that none of them is left
#   scripts/slurm.sh env  [DIR]   print `export SLURM_CONF=DIR/slurm.conf`
#
# DIR defaults to $NBSCHED_SLURM_DIR, else ${TMPDIR:-/tmp}/nbsched-slurm.  Needs root (it
# starts the daemons and makes device files).  Clients find the cluster through
# SLURM_CONF=DIR/slurm.conf.  Settings: NBSCHED_SLURM_GPUS (4), NBSCHED_SLURM_SHARDS (16),
# NBSCHED_SLURM_CPUS (8), NBSCHED_SLURM_PORT (6817; slurmd uses the next one).
set -euo pipefail

cmd=${1:-}
dir=${2:-${NBSCHED_SLURM_DIR:-${TMPDIR:-/tmp}/nbsched-slurm}}
gpus=${NBSCHED_SLURM_GPUS:-4}
shards=${NBSCHED_SLURM_SHARDS:-16}
cpus=${NBSCHED_SLURM_CPUS:-8}
port=${NBSCHED_SLURM_PORT:-6817}
export SLURM_CONF="$dir/slurm.conf"

say() { printf 'slurm.sh: %s\n' "$*" >&2; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host last
  host=$(hostname -s)
  last=$((gpus - 1))
  mkdir -p "$dir/dev" "$dir/pids" "$dir/ctld" "$dir/spool" "$dir/log"
  chmod 755 "$dir" "$dir/dev"
  for i in $(seq 0 "$last"); do
    [ -e "$dir/dev/nvidia$i" ] || mknod -m 666 "$dir/dev/nvidia$i" c 195 "$i"
  done
  cat >"$dir/gres.conf" <<EOF
Name=gpu File=$dir/dev/nvidia[0-$last]
Name=shard Count=$shards
EOF
  cat >"$dir/slurm.conf" <<EOF
ClusterName=nbsched
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/pids/slurmctld.file
SlurmdPidFile=$dir/pids/slurmd.file
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
GresTypes=gpu,shard
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
MinJobAge=3600
KillWait=5
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
NodeName=$host CPUs=$cpus Gres=gpu:$gpus,shard:$shards State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 644 "$dir/slurm.conf" "$dir/gres.conf"
}

alive() { [ -f "$dir/pids/$1.pid" ] && kill -0 "$(cat "$dir/pids/$1.pid")" 2>/dev/null; }

# start NAME CMD...: CMD under setsid (a background job of this shell is no group leader,
# so setsid runs it in a new session without forking: $! is the daemon's pid and group).
start() {
  local name=$1
  shift
  if alive "$name"; then return; fi
  setsid "$@" </dev/null >>"$dir/log/$name.out" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
}

up() {
  [ "$(id -u)" -eq 0 ] || { say "needs root"; exit 1; }
  install
  write_conf
  if ! alive munged; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key
    start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
    for _ in $(seq 100); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.05; done
  fi
  start slurmctld slurmctld -D -i -f "$SLURM_CONF"
  start slurmd slurmd -D -f "$SLURM_CONF"
  for _ in $(seq 300); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      say "up: SLURM_CONF=$SLURM_CONF"
      return
    fi
    sleep 0.1
  done
  say "Slurm did not become idle within 30 s; see $dir/log/"
  sinfo -N -l >&2 || true
  exit 1
}

# stop NAME: SIGTERM to its process group, SIGKILL after 10 s.
stop() {
  local name=$1 pid
  [ -f "$dir/pids/$name.pid" ] || return 0
  pid=$(cat "$dir/pids/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pids/$name.pid"
}

down() {
  if alive slurmctld; then
    # Jobs first: their slurmstepd outlives slurmd.
    local ids
    ids=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      for _ in $(seq 150); do
        [ -z "$(squeue -h -t running,completing -o %A 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  stop slurmd
  stop slurmctld
  stop munged
  local left=""
  for name in slurmd slurmctld munged; do
    alive "$name" && left="$left $name"
  done
  [ -z "$left" ] || { say "still running:$left"; exit 1; }
  say "down"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) say "usage: slurm.sh up|down|env [DIR]"; exit 2 ;;
esac
