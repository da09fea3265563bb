#!/usr/bin/env bash
# Multi-GPU: one process per host drives all of that host's GPUs; the mesh spans every host.
#
# One host:
#   launch/multi_gpu.sh --config=configs/qwen2_5_7b_math.py --config.model.checkpoint=/data/Qwen7B
# N hosts by hand: the same command on each, with rank 0's host:port and each host's own rank:
#   NUM_HOSTS=4 HOST_RANK=0 COORDINATOR=10.0.0.1:1234 launch/multi_gpu.sh [train overrides...]
# SLURM: one task per node; coordinator, host count and rank come from the SLURM_* variables:
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 --wrap "srun launch/multi_gpu.sh \
#       --config=configs/qwen2_5_32b_math.py --config.model.checkpoint=/data/Qwen2.5-32B"
#
# Environment: DRY_RUN=1 (print the command instead of running it), PYTHON (default python),
# XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9). SLURM only: COORDINATOR (default: the first node of
# the step, on port COORDINATOR_PORT or, as jax picks it, 61440 + SLURM_JOB_ID % 4096) and
# GPUS_PER_HOST (default SLURM_GPUS_ON_NODE, else the count from nvidia-smi).
set -euo pipefail

# The first host of a SLURM node list, as jax's own SLURM detection parses it (which would keep the
# ']' of 'node[7]'): 'node001' 'node001,host2' 'node[001-015],host2' 'node[001,007-015]' -> node001.
first_host() {
  local list=$1 prefix rest
  prefix=${list%%[,[]*}
  if [ "${list:${#prefix}:1}" != "[" ]; then echo "$prefix" && return; fi
  rest=${list:${#prefix}+1}
  echo "$prefix${rest%%[],-]*}"
}

need_int() { # name value: refuse anything but a non-negative integer, naming the variable
  case $2 in '' | *[!0-9]*) echo "$1=$2: expected a non-negative integer" >&2 && exit 2 ;; esac
}

extra=()
# Let XLA take most of the GPU memory up front (the rollout KV cache and the optimiser state).
env_vars=("XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}")
if [ -n "${NUM_HOSTS:-}" ]; then # explicit: NUM_HOSTS, HOST_RANK, COORDINATOR
  need_int NUM_HOSTS "$NUM_HOSTS"
  num_hosts=$NUM_HOSTS
  if [ "$num_hosts" -gt 1 ]; then
    : "${COORDINATOR:?set COORDINATOR=host:port, the address of rank 0}"
    : "${HOST_RANK:?set HOST_RANK to the rank of this host, 0..NUM_HOSTS-1}"
    need_int HOST_RANK "$HOST_RANK"
    if [ "$HOST_RANK" -ge "$num_hosts" ]; then
      echo "HOST_RANK=$HOST_RANK: expected 0..$((num_hosts - 1)) for NUM_HOSTS=$num_hosts" >&2
      exit 2
    fi
    coordinator=$COORDINATOR rank=$HOST_RANK
  fi
elif [ -n "${SLURM_STEP_NODELIST:-}" ] && [ "${SLURM_NTASKS:-1}" -gt 1 ]; then # inside srun
  need_int SLURM_NTASKS "$SLURM_NTASKS"
  need_int SLURM_PROCID "${SLURM_PROCID:-}"
  need_int SLURM_JOB_ID "${SLURM_JOB_ID:-}"
  num_hosts=$SLURM_NTASKS rank=$SLURM_PROCID
  nodes=${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-$num_hosts}}
  if [ "$num_hosts" != "$nodes" ]; then
    echo "SLURM_NTASKS=$num_hosts on $nodes nodes: this script drives all GPUs of a node from one" \
      "process; run srun with --ntasks-per-node=1" >&2
    exit 2
  fi
  port=${COORDINATOR_PORT:-$((61440 + SLURM_JOB_ID % 4096))}
  coordinator=${COORDINATOR:-$(first_host "$SLURM_STEP_NODELIST"):$port}
  # jax.distributed.initialize() would detect SLURM by itself, but it then assumes one process per
  # GPU (local_device_ids = [SLURM_LOCALID]) and this process would see one GPU: list them all.
  gpus=${GPUS_PER_HOST:-${SLURM_GPUS_ON_NODE:-}}
  if [ -z "$gpus" ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  need_int "GPUs on this node (GPUS_PER_HOST)" "$gpus"
  if [ "$gpus" -eq 0 ]; then echo "no GPU found on this node: set GPUS_PER_HOST" >&2 && exit 2; fi
  env_vars+=("JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))")
elif [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
  echo "a ${SLURM_JOB_NUM_NODES}-node SLURM job outside srun: run" \
    "'srun --ntasks-per-node=1 launch/multi_gpu.sh ...' so that every node starts a process" >&2
  exit 2
else
  num_hosts=1
fi
if [ "${num_hosts:-1}" -gt 1 ]; then
  extra=(--config.distributed.enabled=True "--config.distributed.coordinator_address=$coordinator"
    "--config.distributed.num_processes=$num_hosts" "--config.distributed.process_id=$rank")
fi

# The user's arguments first: ml_collections refuses a --config.* override before --config=FILE.
cmd=(env "${env_vars[@]}" "${PYTHON:-python}" -m flowrl_jax.train "$@" "${extra[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}" && echo
  exit 0
fi
exec "${cmd[@]}"
