#!/usr/bin/env bash
# One TPU VM worker's side of launch/tpu_pod.sh, which runs it on every worker over ssh:
#
#   launch/tpu_worker.sh start [train overrides...]   the job, detached: it outlives the ssh session
#   launch/tpu_worker.sh status                       running or not, and the log's last line
#   launch/tpu_worker.sh stop                         SIGTERM (a checkpoint is saved), then waits
#   launch/tpu_worker.sh logs                         the log's last LINES lines (FOLLOW=1: follow)
#
# Logs go to logs/train-<time>.log under the checkout (logs/train.log: the newest), on the worker's
# own disk: object storage cannot append. `start` first frees the accelerators: a previous run's
# leftover processes that still hold the TPU devices are killed, else the new job cannot open them.
# Environment: PYTHON (default .venv/bin/python), FLOWRL_JAX_LOGS (default logs), LINES, FOLLOW,
# DRY_RUN=1 (start: print the job's command instead).
set -euo pipefail
cd "$(dirname "$0")/.."
logs=${FLOWRL_JAX_LOGS:-logs}
pidfile=$logs/train.pid
host=$(hostname)

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# Processes with a TPU device open (/dev/accel*, /dev/vfio/N), read off /proc (no lsof needed).
accelerator_holders() {
  local fd target pid
  for fd in /proc/[0-9]*/fd/*; do
    target=$(readlink "$fd" 2>/dev/null) || continue
    case $target in
      /dev/accel* | /dev/vfio/[0-9]*)
        pid=${fd#/proc/}
        echo "${pid%%/*}"
        ;;
    esac
  done | sort -u
}

case ${1:-} in
  start)
    shift
    if [ "${DRY_RUN:-0}" = 1 ]; then # print the job's command, start nothing
      printf '%q ' nohup "${PYTHON:-.venv/bin/python}" -m flowrl_jax.train "$@" && echo
      exit 0
    fi
    if running; then
      echo "$host: a run is going on (pid $(cat "$pidfile")); stop it first" >&2
      exit 1
    fi
    holders=$(accelerator_holders)
    if [ -n "$holders" ]; then
      echo "$host: freeing the accelerators from leftover processes:" $holders
      kill -9 $holders 2>/dev/null || true
    fi
    mkdir -p "$logs"
    log=$logs/train-$(date +%Y%m%d-%H%M%S).log
    ln -sfn "$(basename "$log")" "$logs/train.log"
    # nohup and no stdin: the SIGHUP of the ssh session ending is ignored (the trainer leaves an
    # ignored SIGHUP ignored), and nothing waits on the terminal.
    nohup "${PYTHON:-.venv/bin/python}" -m flowrl_jax.train "$@" > "$log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "$host: started pid $!, log $PWD/$log"
    ;;
  status)
    if running; then
      echo "$host: running (pid $(cat "$pidfile"))"
    else
      echo "$host: not running"
    fi
    tail -n 1 "$logs/train.log" 2>/dev/null || true
    ;;
  stop)
    if running; then
      pid=$(cat "$pidfile")
      kill -TERM "$pid"
      echo "$host: SIGTERM sent to pid $pid; waiting while it saves a checkpoint"
      while kill -0 "$pid" 2>/dev/null; do sleep 1; done
    else
      echo "$host: not running"
    fi
    tail -n 3 "$logs/train.log" 2>/dev/null || true
    ;;
  logs)
    if [ "${FOLLOW:-0}" = 1 ]; then
      tail -n "${LINES:-100}" -f "$logs/train.log"
    else
      tail -n "${LINES:-100}" "$logs/train.log"
    fi
    ;;
  *)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 2
    ;;
esac
