#!/usr/bin/env bash
# Cloud TPU pod slice: create the TPU VM, install on every worker, run the trainer on every worker.
#
#   launch/tpu_pod.sh ACTION TPU_NAME ZONE [train overrides...]
#   ACTION: create|install|run|status|logs|stop|delete
#
#   ACCELERATOR_TYPE=v5p-64 launch/tpu_pod.sh create my-pod us-east5-a
#   launch/tpu_pod.sh install my-pod us-east5-a   # this checkout's HEAD -> ~/flowrl-jax on workers
#   launch/tpu_pod.sh run my-pod us-east5-a --config=configs/qwen2_5_7b_math.py \
#       --config.model.checkpoint=/mnt/ckpt/Qwen2.5-7B --config.workdir=gs://my-bucket/runs/7b
#   launch/tpu_pod.sh status my-pod us-east5-a    # each worker: running or not, last log line
#   launch/tpu_pod.sh logs my-pod us-east5-a      # worker 0's log (WORKER=N, LINES, FOLLOW=1)
#   launch/tpu_pod.sh stop my-pod us-east5-a      # SIGTERM everywhere: a checkpoint, then exit
#   launch/tpu_pod.sh delete my-pod us-east5-a
#
# `run` starts the job detached on every worker (launch/tpu_worker.sh: it outlives the ssh session,
# logs to ~/flowrl-jax/logs/, and first frees the TPU from a previous run's leftover processes);
# FOREGROUND=1 runs it attached instead (the session dropping then sends SIGHUP: a checkpoint).
# Environment: ACCELERATOR_TYPE (create, required), RUNTIME_VERSION (create; by default the base
# image of the TPU generation), SPOT=1 (create a Spot VM), PROJECT (gcloud --project),
# PYTHON_VERSION (install; default 3.11, jax 0.10 needs >= 3.11 and the images ship 3.10),
# DRY_RUN=1 (print the commands instead of running them).
# One process per host; on TPU jax.distributed.initialize() finds the coordinator by itself. The
# HF checkpoint must be on a local path of every worker; the workdir on storage they share (gs://).
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 2; }
[ $# -ge 3 ] || usage
action=$1 tpu=$2 zone=$3
shift 3

# Print (DRY_RUN=1) or run one command; printed words are shell-quoted, one command per line.
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@" && echo; else "$@"; fi
}
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[ -n "${PROJECT:-}" ] && where+=("--project=$PROJECT")
remote_dir='~/flowrl-jax' # expanded by the worker's shell, not here

case $action in
  create)
    : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v5p-64 (see: gcloud compute tpus accelerator-types list)}"
    # Each generation's base image (gcloud compute tpus tpu-vm versions list --zone=ZONE).
    case $ACCELERATOR_TYPE in
      v4-*) default_version=tpu-ubuntu2204-base ;;
      v5litepod-* | v5e-*) default_version=v2-alpha-tpuv5-lite ;;
      v5p-*) default_version=v2-alpha-tpuv5 ;;
      v6e-*) default_version=v2-alpha-tpuv6e ;;
      *) default_version= ;;
    esac
    version=${RUNTIME_VERSION:-$default_version}
    if [ -z "$version" ]; then
      echo "no default image for $ACCELERATOR_TYPE: set RUNTIME_VERSION" >&2
      exit 2
    fi
    flags=("--accelerator-type=$ACCELERATOR_TYPE" "--version=$version")
    [ "${SPOT:-0}" = 1 ] && flags+=(--spot)
    run "${gcloud_tpu[@]}" create "$tpu" "${where[@]}" "${flags[@]}"
    ;;
  install)
    # Ship the committed tree (HEAD), not uncommitted edits; extract over the old copy so that runs
    # under ~/flowrl-jax/runs survive a reinstall.
    tarball="${TMPDIR:-/tmp}/flowrl-jax-$tpu.tar.gz"
    run git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$tarball" HEAD
    run "${gcloud_tpu[@]}" scp "$tarball" "$tpu:~/flowrl-jax.tar.gz" "${where[@]}" --worker=all
    py=${PYTHON_VERSION:-3.11}
    steps=(
      "mkdir -p $remote_dir"
      "tar -xzf ~/flowrl-jax.tar.gz -C $remote_dir"
      "cd $remote_dir"
      'export PATH=$HOME/.local/bin:$PATH'
      '(command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh)'
      "([ -x .venv/bin/python ] || uv venv --python $py .venv)"
      "uv pip install --python .venv/bin/python -r requirements.txt 'jax[tpu]==0.10.2'"
      ".venv/bin/python -c 'import flowrl_jax, jax; print(jax.__version__)'"
    )
    remote=$(printf ' && %s' "${steps[@]}")
    run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "${remote:4}"
    ;;
  run)
    args=""
    [ $# -eq 0 ] || args=$(printf ' %q' "$@") # quoted once more for the worker's shell
    # After the user's arguments: ml_collections refuses a --config.* override before --config=FILE.
    args+=" --config.distributed.enabled=True"
    if [ "${FOREGROUND:-0}" = 1 ]; then
      remote="cd $remote_dir && .venv/bin/python -m flowrl_jax.train$args"
    else
      remote="cd $remote_dir && bash launch/tpu_worker.sh start$args"
    fi
    run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$remote"
    ;;
  status | stop)
    run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all \
      --command "cd $remote_dir && bash launch/tpu_worker.sh $action"
    ;;
  logs)
    env_vars="LINES=${LINES:-100} FOLLOW=${FOLLOW:-0}"
    run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" "--worker=${WORKER:-0}" \
      --command "cd $remote_dir && $env_vars bash launch/tpu_worker.sh logs"
    ;;
  delete)
    run "${gcloud_tpu[@]}" delete "$tpu" "${where[@]}" --quiet
    ;;
  *)
    echo "unknown action '$action': expected create, install, run, status, logs, stop or delete" >&2
    usage
    ;;
esac
