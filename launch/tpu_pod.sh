#!/usr/bin/env bash
# Run the trainer on every worker of a Cloud TPU pod slice (one process per host; jax.distributed
# finds the coordinator by itself on TPU).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [train overrides...]
#   launch/tpu_pod.sh my-v5e-64 us-west4-a --config=configs/hf_checkpoint.py \
#       --config.model.checkpoint=/mnt/ckpt/Qwen2.5-7B-Instruct --config.mesh.tensor=4
#
# The repo must be at ~/flowrl-jax on every worker (e.g. via `gcloud ... scp --worker=all`), and the
# checkpoint on a path every worker can read.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,10p' "$0"; exit 2; fi
tpu=$1; zone=$2; shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/flowrl-jax && pip install -q -r requirements.txt 'jax[tpu]==0.10.2' && \
   python -m flowrl_jax.train --config.distributed.enabled=True${args}"
