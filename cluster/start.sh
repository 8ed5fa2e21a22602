#!/usr/bin/env bash
# Starts Ray on a node of an alliter Ray cluster: the head_start_ray_commands and worker_start_ray_commands
# of both cluster configs. Their line says which `ray start` (the launcher's part: the head with the
# autoscaling config `ray up` wrote, or a worker joining $RAY_HEAD_IP); this script adds the rest:
#
#   bash ~/alliter/cluster/start.sh ray start --head --autoscaling-config=~/ray_bootstrap_config.yaml
#   bash ~/alliter/cluster/start.sh ray start --address=$RAY_HEAD_IP
#
# Ports, from ~/.bashrc (cluster/setup.sh writes them): ALLITER_RAY_PORT (the head's GCS, 6379),
# ALLITER_OBJECT_MANAGER_PORT (8076); ALLITER_RAY_START_FLAGS: more `ray start` flags for every node.
# The dashboard and its job server listen on the head's loopback only (--dashboard-host=127.0.0.1): reach
# them through the SSH tunnel of `ray dashboard CONFIG`.
set -euo pipefail

usage="usage: bash cluster/start.sh ray start --head|--address=HEAD-IP [FLAG ...]"
if [ "${1:-}" != ray ] || [ "${2:-}" != start ]; then
    echo "$usage" >&2
    exit 2
fi
shift 2
port=${ALLITER_RAY_PORT:-6379}
read -r -a extra <<< "${ALLITER_RAY_START_FLAGS:-}"
for flag in "$@" "${extra[@]}"; do
    if [[ $flag == --dashboard-host* ]]; then
        echo "cluster/start.sh: the dashboard stays on the head's loopback; leave out $flag" >&2
        exit 2
    fi
done
case "${1:-}" in
    --head) role=(--head --port="$port" --dashboard-host=127.0.0.1) ;;
    --address=*) role=(--address="${1#--address=}:$port") ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
shift

# Ray opens many files (a socket per worker); where the hard limit is lower, as high as it goes
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Ray's command through this environment's python3, not the first `ray` on PATH: in a venv that reuses
# the machine's Ray (cluster/setup.sh's ALLITER_VENV), that is the machine's interpreter, and the workers
# Ray starts with it would not see the project installed in the venv
ray=(python3 -m ray.scripts.scripts)
"${ray[@]}" stop
exec "${ray[@]}" start "${role[@]}" --object-manager-port="${ALLITER_OBJECT_MANAGER_PORT:-8076}" "$@" "${extra[@]}"
