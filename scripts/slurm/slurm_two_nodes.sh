#!/usr/bin/env bash
# A real two-node SLURM cluster on one machine: slurmctld on the host, and two slurmd, each in its own network and
# UTS namespace (nodes n1 and n2 with their own addresses on a private bridge), so that a 2-node job's tasks talk
# over IP between two "machines" as on a cluster. For tests/test_multinode.py (slow).
#
#   scripts/slurm/slurm_two_nodes.sh up <dir>     needs root; installs slurm-wlm + munge with apt-get when missing, starts
#                                           munged unless one answers; prints the `export SLURM_CONF=...` line
#   scripts/slurm/slurm_two_nodes.sh down <dir>   cancel the jobs, stop the daemons by their pid files, remove the
#                                           namespaces, veths and bridge this script made
#
# Names: bridge lgbr<K>, namespaces lg<K>-n1/-n2 (K = SLURM_TWO_NODES_ID, default 7), addresses 10.213.<K>.0/24.
# Each namespace gets /etc/netns/<ns>/hosts (ip netns exec bind-mounts it over /etc/hosts there), so n1 and n2
# resolve inside the nodes; the host's /etc/hosts is not touched. Every wait is bounded; processes are stopped by pid.
set -euo pipefail

K=${SLURM_TWO_NODES_ID:-7}
NET=10.213.$K
BR=lgbr$K
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6827}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6828}
UP_TIMEOUT_S=${SLURM_LOCAL_UP_TIMEOUT_S:-90}

die() { echo "slurm_two_nodes: $*" >&2; exit 1; }
# pid_alive, stop_pid_file, install_if_missing, start_munge, common_slurm_conf, write_cgroup_conf
source "$(dirname "${BASH_SOURCE[0]}")/slurm_common.sh"

[[ $# -eq 2 ]] || die "usage: $0 up|down <dir>"
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/etc/slurm.conf

ns() { echo "lg$K-n$1"; }

network_up() {
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  local i
  for i in 1 2; do
    ip netns add "$(ns $i)"
    ip link add "lg${K}v$i" type veth peer name eth0 netns "$(ns $i)"
    ip link set "lg${K}v$i" master "$BR" up
    ip -n "$(ns $i)" addr add "$NET.1$i/24" dev eth0
    ip -n "$(ns $i)" link set eth0 up
    ip -n "$(ns $i)" link set lo up
    mkdir -p "/etc/netns/$(ns $i)"
    { cat /etc/hosts; printf '%s\n' "$NET.1 lgctl" "$NET.11 n1" "$NET.12 n2"; } >"/etc/netns/$(ns $i)/hosts"
    echo "n$i" >"/etc/netns/$(ns $i)/hostname"
  done
}

network_down() {
  local i
  for i in 1 2; do
    ip netns del "$(ns $i)" 2>/dev/null || true
    ip link del "lg${K}v$i" 2>/dev/null || true
    rm -rf "/etc/netns/$(ns $i)"
  done
  ip link del "$BR" 2>/dev/null || true
}

write_conf() {
  local mem_mb
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 4 ))
  mkdir -p "$dir/etc" "$dir/state" "$dir/spool/n1" "$dir/spool/n2" "$dir/log" "$dir/run"
  {
    cat <<EOF
# written by scripts/slurm/slurm_two_nodes.sh: two nodes in their own network namespaces, under $dir
ClusterName=lgtwo$K
SlurmctldHost=$(hostname -s)($NET.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmdSpoolDir=$dir/spool/%n
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmdLogFile=$dir/log/slurmd-%n.log
SlurmdParameters=config_overrides
EOF
    common_slurm_conf
    cat <<EOF
NodeName=n1 NodeAddr=$NET.11 CPUs=1 RealMemory=$mem_mb State=UNKNOWN
NodeName=n2 NodeAddr=$NET.12 CPUs=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  } >"$conf"
  write_cgroup_conf
}

up() {
  [[ $(id -u) -eq 0 ]] || die "needs root (namespaces, veths, slurmd)"
  mkdir -p "$dir/run"
  install_if_missing
  start_munge
  ip link show "$BR" >/dev/null 2>&1 && die "bridge $BR exists (another cluster? SLURM_TWO_NODES_ID=<n>)"
  write_conf
  network_up || { network_down; die "could not build the namespaces and bridge"; }
  export SLURM_CONF=$conf
  slurmctld -c -f "$conf" || { network_down; die "slurmctld did not start (see $dir/log/slurmctld.log)"; }
  local i
  for i in 1 2; do  # its own network (ip netns exec) and UTS namespace (unshare --uts) with hostname n<i>
    ip netns exec "$(ns $i)" unshare --uts sh -c "hostname n$i && exec slurmd -f '$conf' -N n$i" \
      || { down; die "slurmd n$i did not start (see $dir/log/slurmd-n$i.log)"; }
  done
  local deadline=$((SECONDS + UP_TIMEOUT_S)) state=""
  while (( SECONDS < deadline )); do
    sleep 0.5
    state=$(sinfo -h -N -o '%N=%t' 2>/dev/null | sort | tr '\n' ' ' || true)
    if [[ $state == "n1=idle n2=idle " ]]; then
      echo "export SLURM_CONF=$conf"
      return
    fi
  done
  down
  die "nodes not idle after ${UP_TIMEOUT_S}s (sinfo: '$state'; see $dir/log/)"
}

down() {
  if [[ -f $conf ]] && pid_alive "$dir/run/slurmctld.pid"; then
    SLURM_CONF=$conf scancel --full --quiet --partition=two 2>/dev/null || true
    for _ in $(seq 60); do [[ -z $(SLURM_CONF=$conf squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  stop_pid_file "$dir/run/slurmd-n1.pid"
  stop_pid_file "$dir/run/slurmd-n2.pid"
  stop_pid_file "$dir/run/slurmctld.pid"
  stop_pid_file "$dir/run/munged.pid"  # present only when up started munged
  network_down
}

case $cmd in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down <dir>" ;;
esac
