#!/usr/bin/env bash
# Build the `panda70m` TFDS dataset with Apache Beam on a distributed runner.
#
#   launch/build_panda70m_beam.sh dataflow --config local --manual_dir /mnt/videos
#   launch/build_panda70m_beam.sh flink    --config official --manual_dir /shared/panda70m
#   launch/build_panda70m_beam.sh spark    --config local --manual_dir /shared/videos
#   launch/build_panda70m_beam.sh direct   --config sample          # 2 local processes
#
# Settings come from the environment: DATA_DIR (where the dataset and the stage records in
# DATA_DIR/panda70m_work/ go: it must be a path every worker can write, e.g. a bucket
# mounted with gcsfuse on Dataflow: the stages use local file APIs), WORKERS, and per runner
# PROJECT, REGION, TEMP_LOCATION (gs://...) for Dataflow, FLINK_MASTER, SPARK_MASTER.
# Workers need this repository installed: Dataflow gets it as a wheel built here
# (`extra_packages`); on Flink and Spark install it on the workers (`pip install .`).
set -euo pipefail
cd "$(dirname "$0")/.."

runner="${1:?usage: $0 dataflow|flink|spark|direct [tfds build flags...]}"
shift
data_dir="${DATA_DIR:-$HOME/tensorflow_datasets}"
workers="${WORKERS:-2}"

case "$runner" in
  dataflow)
    options="runner=DataflowRunner,project=${PROJECT:?set PROJECT},region=${REGION:-us-central1}"
    python -m pip wheel --no-deps --no-build-isolation --quiet -w dist .
    wheel="$(ls -t dist/panda_jax-*.whl | head -n 1)"
    options+=",temp_location=${TEMP_LOCATION:?set TEMP_LOCATION=gs://BUCKET/tmp},extra_packages=${wheel},max_num_workers=${workers}"
    ;;
  flink)
    options="runner=FlinkRunner,flink_master=${FLINK_MASTER:-localhost:8081},environment_type=LOOPBACK"
    options+=",parallelism=${workers}"
    ;;
  spark)
    options="runner=SparkRunner,spark_master_url=${SPARK_MASTER:-spark://localhost:7077},environment_type=LOOPBACK"
    ;;
  direct)
    options="runner=DirectRunner,direct_num_workers=${workers},direct_running_mode=multi_processing"
    ;;
  *)
    echo "unknown runner '$runner': choose dataflow, flink, spark or direct" >&2
    exit 2
    ;;
esac

exec tfds build panda70m --imports tfds_builders --data_dir "$data_dir" \
  --beam_pipeline_options="$options" "$@"
