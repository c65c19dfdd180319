#!/usr/bin/env bash
# Caption clips on every host of a Cloud TPU pod slice: one process per host, each captioning its
# share of the clip shards on its own chips (`python -m panda_jax.caption --distributed`).
#
#   TPU=my-pod ZONE=us-central2-b launch/caption_tpu_pod.sh \
#     --clips /mnt/data/split/clips.jsonl --videos /mnt/data/videos.jsonl --out /mnt/data/caption \
#     --config=teachers:panda70m --config.weights_dir=/mnt/weights --mesh data=-1,model=4
#
# Every host must see the same paths (a shared filesystem or gcsfuse mounts) and have this
# repository installed in REPO (default ~/panda-jax, with its .venv). JAX finds the pod's
# coordinator itself on TPU VMs, so no address is needed. Process 0 merges the records once all
# hosts have finished; a rerun after a preemption resumes from the shards already written.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
repo="${REPO:-~/panda-jax}"
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $repo && .venv/bin/python -m panda_jax.caption --distributed$args"
