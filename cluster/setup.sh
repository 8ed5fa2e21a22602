#!/usr/bin/env bash
# Sets up one node of an alliter Ray cluster: Python, Ray and this project. Both cluster configs run it on
# every node (their setup_commands), from the copy of this checkout that their file_mounts made at ~/alliter:
#
#   bash ~/alliter/cluster/setup.sh [NAME=VALUE ...]
#
# Each NAME=VALUE (an ALLITER_ name; a leading ~/ is the home folder) is exported in ~/.bashrc, which the
# launcher sources before every later command on the node (ray start, ray exec), and before the lines below:
#   ALLITER_STORAGE          the sweep's default --storage (an S3 URI, or a folder every node shares)
#   ALLITER_GPUS_PER_TRIAL   the sweep's default --gpus-per-trial
#   ALLITER_VENV             a virtual environment to install into, made with the packages of the python3 on
#                            PATH (its torch) if missing; not used where the AWS Deep Learning AMI's is
#   ALLITER_PIP_FLAGS        extra flags of both pip installs (an index of your own; offline: --no-index ...)
#   ALLITER_RAY_PORT, ALLITER_OBJECT_MANAGER_PORT, ALLITER_RAY_START_FLAGS: read by cluster/start.sh
# Safe to run again: `ray up` runs it on every update, and the autoscaler on every new worker.
set -euo pipefail

# export NAME=VALUE in ~/.bashrc (replacing an earlier value) and here
keep() {
    touch ~/.bashrc
    sed -i "/^export $1=/d" ~/.bashrc
    printf 'export %s=%q\n' "$1" "$2" >> ~/.bashrc
    export "$1=$2"
}

for setting in "$@"; do
    name=${setting%%=*}
    value=${setting#*=}
    if [[ $setting != *=* || ! $name =~ ^ALLITER_[A-Z0-9_]+$ ]]; then
        echo "cluster/setup.sh: expected ALLITER_NAME=VALUE, got: $setting" >&2
        exit 2
    fi
    [[ $value == "~/"* ]] && value=$HOME/${value#"~/"}
    keep "$name" "$value"
done

# Python: the PyTorch venv of the AWS Deep Learning AMI (Python + CUDA-enabled torch); else $ALLITER_VENV;
# else the python on PATH, which must then be a Python >= 3.10 that this user can pip-install into
activate=
if [ -f /opt/pytorch/bin/activate ]; then
    activate=/opt/pytorch/bin/activate
elif [ -n "${ALLITER_VENV:-}" ]; then
    if [ ! -f "$ALLITER_VENV/bin/activate" ]; then
        # the machine's pip and setuptools too, where it has them: a venv's own (ensurepip's) are older
        # ones that would shadow them
        python3 -m pip --version > /dev/null 2>&1 && own_pip=--without-pip || own_pip=
        python3 -m venv --system-site-packages $own_pip "$ALLITER_VENV"
        # a python3 that is itself a virtual environment (a venv, conda): --system-site-packages gives the new
        # venv its base interpreter's packages, not this environment's; a .pth file adds them, after its own
        outer=$(python3 -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')
        if [ -n "$outer" ]; then
            inner=$("$ALLITER_VENV/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            printf '%s\n' "$outer" > "$inner/alliter-outer-environment.pth"
        fi
    fi
    activate=$ALLITER_VENV/bin/activate
fi
if [ -n "$activate" ]; then
    grep -qxF "source $activate" ~/.bashrc || echo "source $activate" >> ~/.bashrc
    set +u  # activate scripts read unset variables
    source "$activate"
    set -u
fi

read -r -a pip_flags <<< "${ALLITER_PIP_FLAGS:-}"
# Ray itself, pinned: the same version as on your laptop (`pip install "ray[default,tune]==2.60.0"`).
# [default] brings the dashboard and the job server, [tune] Ray Tune; boto3 is what the autoscaler on the
# head uses to launch AWS workers (the DLAMI venv has it already; it is not upgraded, since the venv's aws
# CLI pins its botocore).
python3 -m pip install "${pip_flags[@]}" "ray[default,tune]==2.60.0" boto3
# This project and its dependencies (torch, transformers, ...), from the copy that file_mounts made. NOT -e:
# a regular install, so the bundled model files (package data) are installed with the package. A local
# folder is rebuilt and reinstalled on every run.
python3 -m pip install "${pip_flags[@]}" ~/alliter

# Ray's token authentication: on wherever file_mounts brought a token (your ~/.ray/auth_token), on every
# node, so that workers (`ray start --address`) and clients given an address send it too
token=~/.alliter/ray_auth_token
if [ -s "$token" ]; then
    chmod 600 "$token"
    keep RAY_AUTH_MODE token
    keep RAY_AUTH_TOKEN_PATH "$token"
else
    sed -i '/^export RAY_AUTH_MODE=/d; /^export RAY_AUTH_TOKEN_PATH=/d' ~/.bashrc
fi
