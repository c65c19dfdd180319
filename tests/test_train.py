"""The training loop on the tiny configs: the selector overfits a batch, a killed run resumes to the parameters of an
uninterrupted one, a step on 8 devices equals a step on one. (The student: test_train_captioner.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import fit
from flax import nnx

from panda_jax import cli, tasks, train
from panda_jax.data.pipeline import make_dataset
from panda_jax.models import sharding


def tiny_config(name: str, weights, **train_fields):
    config = cli.load_config(f"{name}:tiny")
    config.weights_dir = str(weights)
    config.train.update(train_fields)
    return config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_weights")


def first_batch(config, task, mesh) -> dict:
    source, _ = tasks.data_sources(config)
    batches = make_dataset(source, train=True, batch_size=config.train.batch_size, num_frames=config.train.num_frames,
                           image_size=config.train.image_size, **task.data)  # fmt: skip
    return sharding.shard_batch(train.model_inputs(next(iter(batches))), mesh)


def test_the_selector_learns_to_pick_the_labelled_caption_of_a_batch(weights):
    """Panda-70M's fine-tuning: 3 candidate captions per clip, one labelled, hard negatives weighted."""
    config = tiny_config("retrieval", weights)
    config.data.candidates = 3
    mesh = sharding.make_mesh(data=1, model=1, devices=jax.devices()[:1])
    task = tasks.TASKS["retrieval"](config, mesh)
    batch = first_batch(config, task, mesh)
    assert batch["candidate_ids"].shape[:2] == (4, 3) and set(np.asarray(batch["positive"])) <= {0, 1, 2}
    history = fit(task, batch, mesh, steps=60, learning_rate=3e-3)
    assert history[0]["vtc"] > 0.5 and history[-1]["vtc"] < 0.05  # each clip picks out its labelled caption
    assert history[-1]["top1"] == 1.0 and history[-1]["loss"] < 0.75 * history[0]["loss"]


def flat(tree) -> dict[str, np.ndarray]:
    """Leaves by their path, list indices and dict keys alike as strings (Orbax gives back "0" for 0)."""
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    return {"/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path): leaf for path, leaf in leaves}


def final_parameters(workdir) -> dict[str, np.ndarray]:
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return flat(restored["state"]["params"])


@pytest.mark.heavy
def test_a_killed_run_resumes_to_the_parameters_of_an_uninterrupted_one(weights, tmp_path):
    arguments = ["--config=retrieval:tiny", f"--config.weights_dir={weights}", "--config.train.steps=12",
                 "--config.train.checkpoint_every=4", "--config.train.eval_every=6", "--config.train.log_every=2"]
    whole = tmp_path / "whole"
    assert train.main([*arguments, "--workdir", str(whole)]) == 0
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["trained_steps"] == 12 and summary["final"]["loss"] > 0

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "panda_jax.train", *arguments, "--workdir", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "4").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    resumed = json.loads((killed / "summary.json").read_text())
    assert 4 <= resumed["resumed_from"] < 12
    wanted = final_parameters(whole)
    assert final_parameters(killed).keys() == wanted.keys()
    for name, value in final_parameters(killed).items():
        np.testing.assert_array_equal(value, wanted[name], err_msg=name)
    # Exported, the run is a selector folder `select --checkpoint` reads, holding the trained parameters.
    from panda_jax import export
    from panda_jax.models import video_retrieval

    assert export.main(["--checkpoint", str(killed), "--out", str(tmp_path / "selector")]) == 0
    exported = flat(nnx.to_pure_dict(nnx.state(video_retrieval.load(tmp_path / "selector"), nnx.Param)))
    assert exported.keys() == wanted.keys()
    for name, value in exported.items():
        np.testing.assert_array_equal(value, wanted[name], err_msg=name)
    # The metrics read like one run: every logged step once, in order.
    steps = [(m["step"], m["split"]) for m in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())]
    assert steps == [(m["step"], m["split"]) for m in map(json.loads, (whole / "metrics.jsonl").read_text().splitlines())]


SHARDED_STEP = """
import jax, numpy as np, optax
from flax import nnx
from panda_jax import cli, tasks, train
from panda_jax.data.pipeline import make_dataset
from panda_jax.models import sharding

config = cli.load_config("retrieval:tiny")
config.weights_dir = {weights!r}
config.train.batch_size = 8
results = []
for devices, fsdp in ((jax.devices()[:1], False), (jax.devices(), False), (jax.devices(), True)):
    mesh = sharding.make_mesh(data=len(devices), model=1, devices=devices)
    task = tasks.TASKS["retrieval"](config, mesh)
    source, _ = tasks.data_sources(config)
    batch = next(iter(make_dataset(source, train=True, batch_size=8, num_frames=4, image_size=28, **task.data)))
    # Plain SGD: an update proportional to the gradient, so equal gradients give equal parameters.
    optimizer = nnx.Optimizer(task.model, optax.sgd(0.1), wrt=task.trainable)
    if fsdp:
        sharding.shard_model(task.model, mesh, fsdp=True)
        kernel = task.model.image_model.vision_model.layers[0].mlp.fc1.kernel
        assert "data" in tuple(kernel[...].sharding.spec), kernel[...].sharding
    sharding.shard_model(optimizer, mesh, fsdp=fsdp)
    step = train.make_train_step(task, 1)
    for i in range(2):
        metrics = step(task.model, optimizer, sharding.shard_batch(train.model_inputs(batch), mesh), jax.random.key(i))
    results.append(jax.device_get(nnx.to_pure_dict(nnx.state(task.model, nnx.Param))))
    print(len(devices), "devices, fsdp" if fsdp else "devices:", "loss", float(metrics["loss"]), flush=True)
for other in results[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), results[0], other)
print("equal")
"""


@pytest.mark.heavy
def test_two_steps_on_eight_devices_equal_two_steps_on_one(weights):
    """The batch split over 8 CPU devices ('data'), the parameters replicated, then also split over 'data' (FSDP):
    the same parameters after two steps."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = textwrap.dedent(SHARDED_STEP.format(weights=str(weights)))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "equal" in result.stdout, result.stdout + result.stderr[-3000:]


def test_export_refuses_what_is_not_a_training_run(tmp_path, capsys):
    from panda_jax import export

    for command in (["--checkpoint", str(tmp_path), "--out", str(tmp_path / "out")], ["--out", str(tmp_path / "o")]):
        with pytest.raises(SystemExit) as stopped:
            export.main(command)
        assert stopped.value.code == 2
    assert "not a training work folder" in capsys.readouterr().err
