#!/bin/bash
# syncd's runner for CyberGIS-Compute (syncd's README, section "CyberGIS-Compute").
#
# The gateway runs this from the executable folder, with data_folder and result_folder in the
# environment. The data folder is the job folder syncd staged: the job's inputs, and syncd's
# wrapper with the command in data files under .syncd/. It is copied into the result folder,
# the job's environment is read from .syncd/env/ (one file per variable, never evaluated), and
# the wrapper runs the command there and records its exit code. param and env (syncd sends
# only the job's key, param_syncd_key) are never run.
set -u
if [ -z "${data_folder:-}" ] || [ ! -f "$data_folder/.syncd/run.sh" ]; then
    echo "syncd-runner: no job staged by syncd in the data folder (${data_folder:-unset})" >&2
    exit 2
fi
cp -R "$data_folder/." "$result_folder/" || exit 2
cd "$result_folder" || exit 2
for file in .syncd/env/*; do
    [ -f "$file" ] || continue
    name=${file##*/}
    case $name in
        ''|[0-9]*|*[!A-Za-z0-9_]*) continue ;;
    esac
    value=$(cat "$file"; printf x)
    export "$name=${value%x}"
done
exec /bin/sh .syncd/run.sh
