#!/bin/sh
# The training Jobs' entry point: train (resuming the run when it has a backup), then, on worker 0 only,
# export the best weights as the next model version. Arguments go to `python -m training.train`.
#
# Environment: RUN_DIR, EXPORT_DIR, MODEL_NAME (required); WORKERS (default 1). With WORKERS > 1 the pod is
# one index of an Indexed Job behind a headless Service, and TF_CONFIG is built here from
# JOB_COMPLETION_INDEX: worker i is WORKER_HOSTNAME_PREFIX-i.WORKER_SERVICE:WORKER_PORT, the DNS name
# Kubernetes gives pod i of an Indexed Job whose pods have that Service as their subdomain.
# Writes nothing but what training and export write (read-only root filesystem).
set -eu
: "${RUN_DIR:?RUN_DIR is not set}" "${EXPORT_DIR:?EXPORT_DIR is not set}" "${MODEL_NAME:?MODEL_NAME is not set}"
workers="${WORKERS:-1}"
index="${JOB_COMPLETION_INDEX:-0}"

if [ "$workers" -gt 1 ]; then
  : "${WORKER_HOSTNAME_PREFIX:?}" "${WORKER_SERVICE:?}" "${WORKER_PORT:?}"
  if [ "$index" -ge "$workers" ]; then
    echo "JOB_COMPLETION_INDEX $index is not below WORKERS $workers" >&2
    exit 2
  fi
  hosts=""
  i=0
  while [ "$i" -lt "$workers" ]; do
    hosts="${hosts:+$hosts, }\"$WORKER_HOSTNAME_PREFIX-$i.$WORKER_SERVICE:$WORKER_PORT\""
    i=$((i + 1))
  done
  TF_CONFIG="{\"cluster\": {\"worker\": [$hosts]}, \"task\": {\"type\": \"worker\", \"index\": $index}}"
  export TF_CONFIG
  echo "TF_CONFIG=$TF_CONFIG"
fi

# Every worker sees the same run directory (a shared volume), so all of them resume or none does.
if [ -f "$RUN_DIR/backup.npz" ]; then
  set -- --resume "$@"
fi
python -m training.train --run-dir "$RUN_DIR" "$@"

if [ "$index" -eq 0 ]; then
  # A new version only when the weights changed; it appears whole (built aside, then renamed).
  python -m training.export --run-dir "$RUN_DIR" --export-dir "$EXPORT_DIR" --model-name "$MODEL_NAME" --if-changed
fi
