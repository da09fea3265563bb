#!/usr/bin/env bash
# Multi-GPU: one process per host drives all its local GPUs. On one host just run:
#   launch/multi_gpu.sh [train overrides...]
# On N hosts, run on each with the same coordinator and its own rank:
#   NUM_HOSTS=2 HOST_RANK=0 COORDINATOR=10.0.0.1:1234 launch/multi_gpu.sh --config.mesh.tensor=8
set -euo pipefail
num_hosts=${NUM_HOSTS:-1}
extra=()
if [ "$num_hosts" -gt 1 ]; then
  : "${COORDINATOR:?set COORDINATOR=host:port (rank 0's address)}"
  : "${HOST_RANK:?set HOST_RANK to this host's rank, 0..NUM_HOSTS-1}"
  extra=(--config.distributed.enabled=True "--config.distributed.coordinator_address=$COORDINATOR"
         "--config.distributed.num_processes=$num_hosts" "--config.distributed.process_id=$HOST_RANK")
fi
# Let XLA use most of the GPU memory up front (the rollout KV cache and the optimiser state).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m flowrl_jax.train "${extra[@]}" "$@"
