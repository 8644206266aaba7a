# What scripts/slurm/slurm_local.sh and scripts/slurm/slurm_two_nodes.sh share; sourced by both, not run on its own.
# The sourcing script defines die() (its message prefix, and what to clean up) and sets $dir (the cluster's folder,
# absolute) before calling these. Written for Debian 12 / slurm-wlm 22.05 (slurm/README.md). Processes are stopped
# by pid file only, never by name; every wait is bounded.

DOWN_TIMEOUT_S=${SLURM_LOCAL_DOWN_TIMEOUT_S:-30}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid_file() {  # stop_pid_file <file>: SIGTERM, wait up to DOWN_TIMEOUT_S, SIGKILL; then remove the file
  local file=$1 pid
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + DOWN_TIMEOUT_S))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

install_if_missing() {  # slurm-wlm + munge with apt-get (as root) unless the daemons and sbatch are on PATH
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  [[ $(id -u) -eq 0 ]] || die "slurm-wlm/munge are not installed and this is not root: apt-get install slurm-wlm munge"
  command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and there is no apt-get to install them"
  echo "$(basename "$0" .sh): installing slurm-wlm and munge" >&2
  apt-get update -qq >"$dir/apt.log" 2>&1 || die "apt-get update failed (see $dir/apt.log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
    >>"$dir/apt.log" 2>&1 || die "apt-get install slurm-wlm munge failed (see $dir/apt.log)"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {  # munged as user munge, unless one answers already; its pid goes to $dir/run/munged.pid if started here
  if munge_ok; then
    echo "$(basename "$0" .sh): using the munged that already answers" >&2
    return
  fi
  [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (reinstall munge: apt-get install --reinstall munge)"
  mkdir -p /run/munge /var/log/munge /var/lib/munge "$dir/run"
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  # munged runs as user munge, which may not reach $dir (pytest's temp dirs are root-only): its default paths
  runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do
    if munge_ok && [[ -s /run/munge/munged.pid ]]; then
      cp /run/munge/munged.pid "$dir/run/munged.pid"  # down stops munged only when this script started it
      return
    fi
    sleep 0.2
  done
  die "munge -n | unmunge does not say Success (see /var/log/munge/munged.log)"
}

common_slurm_conf() {  # the slurm.conf lines every cluster here has: root, munge, no cgroups, no accounting
  cat <<EOF
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=10
EOF
}

write_cgroup_conf() {  # $dir/etc/cgroup.conf
  cat >"$dir/etc/cgroup.conf" <<EOF
# slurm 22.05 has no "disabled" cgroup plugin; with no constraints this lets slurmd start without systemd
CgroupPlugin=cgroup/v1
IgnoreSystemd=yes
CgroupAutomount=no
EOF
}
