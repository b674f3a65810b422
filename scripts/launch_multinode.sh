#!/usr/bin/env bash
# Multi-node data parallelism through Open MPI: mpirun starts the ranks on the hosts of a
# host file; the trainer needs nothing else (Slurm and other launchers work through MPI).
#
#   scripts/launch_multinode.sh HOSTFILE RANKS [trainer args...]
#
# HOSTFILE lists one host per line with its slots, e.g.
#   node1 slots=8
#   node2 slots=8
# Use one slot per GPU with ./train_gptcu (TRAINER=./train_gptcu), and one per node with
# ./train_gpt, whose OpenMP threads use the node's cores (set OMP_NUM_THREADS).
# Every node needs the repository at the same path and the data shards (a shared file
# system, or a copy), and the run directory must be on a file system rank 0 can write;
# all ranks read the checkpoint when resuming.
#
# Example: scripts/launch_multinode.sh hosts.txt 16 -c configs/x.json --out runs/x
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
HOSTFILE=$1
RANKS=$2
shift 2
TRAINER=${TRAINER:-./train_gpt}
cd "$(dirname "$0")/.."
exec mpirun --hostfile "$HOSTFILE" -np "$RANKS" --map-by ppr:1:slot --bind-to none \
    -x OMP_NUM_THREADS -x OPENBLAS_CORETYPE -x PATH -x LD_LIBRARY_PATH \
    "$TRAINER" "$@"
