#!/usr/bin/env bash
# Caption clips on a SLURM cluster of GPU nodes: one process per node, each on its node's GPUs.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/caption_slurm.sh \
#     --clips /shared/split/clips.jsonl --videos /shared/videos.jsonl --out /shared/caption \
#     --config=teachers:panda70m --config.weights_dir=/shared/weights --mesh data=-1,model=2
#
# JAX reads the job's layout from SLURM's variables (process count, index, the first node as
# coordinator). Paths must be on a filesystem every node sees. Process 0 merges the records once
# all nodes have finished; resubmitting the same job resumes from the shards already written.
#SBATCH --job-name=panda-caption
#SBATCH --ntasks-per-node=1
#SBATCH --output=caption-%j.log
set -euo pipefail
repo="${REPO:-$SLURM_SUBMIT_DIR}"
srun --ntasks-per-node=1 "$repo/.venv/bin/python" -m panda_jax.caption --distributed "$@"
