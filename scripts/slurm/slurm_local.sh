#!/usr/bin/env bash
# A real one-host SLURM cluster under a directory, for trying the slurm/*.sbatch templates and for tests/test_slurm.py.
#
#   scripts/slurm/slurm_local.sh up <dir>      install slurm-wlm + munge if missing, write <dir>/etc/slurm.conf, start
#                                        munged (unless one answers already), slurmctld and slurmd; wait for `idle`
#   scripts/slurm/slurm_local.sh down <dir>    cancel the cluster's jobs, stop the daemons it started, by their pid files
#   scripts/slurm/slurm_local.sh env <dir>     print the `export SLURM_CONF=...` line that points sbatch/srun/squeue at it
#
# Needs root (apt-get, munged as user munge, slurmd); tested on Debian 12 with slurm-wlm 22.05 (slurm/README.md).
# Processes are stopped by pid only, never by name. Every wait is bounded.
set -euo pipefail

UP_TIMEOUT_S=${SLURM_LOCAL_UP_TIMEOUT_S:-60}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}

cleanup_on_failure=0
die() {
  echo "slurm_local: $*" >&2
  if (( cleanup_on_failure )); then cleanup_on_failure=0; down; fi  # a half-started cluster: stop what did start
  exit 1
}
usage() { die "usage: $0 up|down|env <dir>"; }

# pid_alive, stop_pid_file, install_if_missing, start_munge, common_slurm_conf, write_cgroup_conf
source "$(dirname "${BASH_SOURCE[0]}")/slurm_common.sh"

[[ $# -eq 2 ]] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/etc/slurm.conf

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))  # RealMemory must lie below the machine's
  mkdir -p "$dir/etc" "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
  {
    cat <<EOF
# written by scripts/slurm/slurm_local.sh: a one-host cluster under $dir
ClusterName=local
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmdSpoolDir=$dir/spool
SlurmdPidFile=$dir/run/slurmd.pid
SlurmdLogFile=$dir/log/slurmd.log
EOF
    common_slurm_conf
    cat <<EOF
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  } >"$conf"
  write_cgroup_conf
}

up() {
  install_if_missing
  mkdir -p "$dir/run" "$dir/log"
  if pid_alive "$dir/run/slurmctld.pid" || pid_alive "$dir/run/slurmd.pid"; then
    die "a cluster from $dir is running already (scripts/slurm/slurm_local.sh down $dir first)"
  fi
  local port
  for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is taken (another cluster?): set SLURM_LOCAL_CTLD_PORT / SLURM_LOCAL_SLURMD_PORT"
    fi
  done
  write_conf
  cleanup_on_failure=1
  start_munge
  export SLURM_CONF=$conf
  slurmctld -c -f "$conf" || die "slurmctld did not start (see $dir/log/slurmctld.log)"
  slurmd -f "$conf" || die "slurmd did not start (see $dir/log/slurmd.log)"
  local deadline=$((SECONDS + UP_TIMEOUT_S)) state="" daemon
  while (( SECONDS < deadline )); do
    sleep 0.5
    for daemon in slurmctld slurmd; do  # both write their pid file once running; a dead one will not come back
      if [[ -s $dir/run/$daemon.pid ]] && ! pid_alive "$dir/run/$daemon.pid"; then
        die "$daemon exited (see $dir/log/$daemon.log)"
      fi
    done
    pid_alive "$dir/run/slurmctld.pid" && pid_alive "$dir/run/slurmd.pid" || continue
    state=$(sinfo -h -o %t 2>/dev/null || true)
    if [[ $state == idle ]]; then
      cleanup_on_failure=0
      echo "export SLURM_CONF=$conf"
      return
    fi
  done
  die "node not idle after ${UP_TIMEOUT_S}s (sinfo says '${state}'; see $dir/log/slurmctld.log and slurmd.log)"
}

down() {
  [[ -f $conf ]] || { echo "slurm_local: no cluster under $dir" >&2; return 0; }
  export SLURM_CONF=$conf
  if pid_alive "$dir/run/slurmctld.pid"; then
    # jobs first, so that no slurmstepd (and no training process) outlives the daemons
    scancel --full --quiet --partition=local 2>/dev/null || true
    local deadline=$((SECONDS + DOWN_TIMEOUT_S))
    while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && (( SECONDS < deadline )); do sleep 0.5; done
  fi
  stop_pid_file "$dir/run/slurmd.pid"
  stop_pid_file "$dir/run/slurmctld.pid"
  stop_pid_file "$dir/run/munged.pid"  # present only when up started munged
}

case $cmd in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) usage ;;
esac
