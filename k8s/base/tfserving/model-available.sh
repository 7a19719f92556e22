#!/bin/bash
# TF Serving's readiness probe: ready only when GET /v1/models/<model> on the REST port answers 200 with a
# version in state AVAILABLE. Usage: model-available.sh REST_PORT MODEL_NAME
#
# An httpGet probe would only see the status code, and TF Serving answers 200 while its one version is still
# LOADING or has ended (versions that reached END stay listed). The official tensorflow/serving image has no
# curl, wget or python, but its entrypoint is a bash script, so this uses bash alone: /dev/tcp for the request
# and [[ =~ ]] on the JSON. Nothing is written anywhere (read-only root filesystem).
set -u
port="${1:?usage: model-available.sh REST_PORT MODEL_NAME}"
model="${2:?usage: model-available.sh REST_PORT MODEL_NAME}"

exec 3<>"/dev/tcp/127.0.0.1/${port}" || { echo "TF Serving's REST port ${port} does not answer"; exit 1; }
printf 'GET /v1/models/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "${model}" >&3

IFS= read -r -t 4 status <&3 || { echo "no HTTP status line from port ${port}"; exit 1; }
status="${status%$'\r'}"
if [[ ! "${status}" =~ ^HTTP/1\.[01]\ 200 ]]; then
  echo "GET /v1/models/${model}: ${status}"
  exit 1
fi
reply=""
while IFS= read -r -t 4 line <&3 || [[ -n "${line}" ]]; do
  reply+="${line}"
  line=""
done
exec 3<&-

if [[ "${reply}" =~ \"state\"[[:space:]]*:[[:space:]]*\"AVAILABLE\" ]]; then
  exit 0
fi
echo "no version of ${model} is AVAILABLE: ${reply:0:300}"
exit 1
