"""The shard runner that every stage (split, caption, select) runs through.

A stage turns shards of input (for split, one video) into records. The runner

  * fingerprints every shard: the stage's name, version and whole config, the shard's payload
    and the identity (path, size, modification time) of its source files. A shard stored with
    the same fingerprint is reused; any other is recomputed, so a changed setting or a replaced
    source never reuses stale results;
  * isolates every shard: an exception, or the death of the worker process running it (a crash,
    the out-of-memory killer), becomes a `failures` record for that shard and the run goes on.
    Failed shards are tried again by the next run;
  * writes each finished shard at once, atomically, to OUT/work/<stage>/<key>.jsonl, so a killed
    run resumes where it stopped; files a shard made (clip videos) are checked on reuse, and
    those an older version of the shard made and the new one did not are removed;
  * merges every finished shard of the folder made with the current config into
    OUT/<kind>.jsonl and OUT/failures.jsonl, streaming, in shard-key order, so a rerun after a
    kill writes the same bytes as an uninterrupted run and runs over different inputs add up;
  * gives each process of a multi-host run its share of the shards (`jax.process_index()` of
    `jax.process_count()`); process 0 merges once all have finished.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import tqdm

from panda_jax.files import atomic_output, identity, remove_orphans
from panda_jax.records import Failure, Problem, Record, RecordError, check_id, dumps, write_jsonl

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of work: `key` names its file, `payload` (JSON) and `sources` (files) define it."""

    key: str
    payload: Mapping[str, Any]
    sources: tuple[str, ...] = ()


@dataclasses.dataclass
class ShardResult:
    """What a stage made of a shard: records by kind, failures, and files under the output folder."""

    records: dict[str, list[Record]] = dataclasses.field(default_factory=dict)
    failures: list[Failure] = dataclasses.field(default_factory=list)
    files: tuple[str, ...] = ()  # relative to the output folder


# Config fields that say how a run goes, not what it makes: never part of a shard's fingerprint.
RUN_FIELDS = ("out", "workers")


def output_settings(config: Any) -> dict[str, Any]:
    """A stage config (ml_collections) as JSON, without its RUN_FIELDS: what `Stage.settings` returns."""
    return {key: value for key, value in config.to_dict().items() if key not in RUN_FIELDS}


class Stage(Protocol):
    name: str  # "split": shards live in OUT/work/split/, failures name it
    version: int  # bumped when the same config would now give other records
    outputs: tuple[str, ...]  # record kinds merged into OUT/<kind>.jsonl

    def settings(self) -> Mapping[str, Any]:
        """The stage's whole config as JSON: part of every shard's fingerprint."""
        ...

    def setup(self) -> None:
        """Loads what processing needs (models, detectors), once per process."""
        ...

    def process(self, shard: Shard, out_dir: Path) -> ShardResult:
        """Processes one shard; may raise, which makes the shard a failure."""
        ...


class StageSetupError(RuntimeError):
    """A worker could not set the stage up: a problem of the config, not of one item."""


@dataclasses.dataclass
class Summary:
    shards: int = 0  # shards of this run (this process's share)
    reused: int = 0
    done: int = 0
    failed: int = 0  # shards of this run that failed
    stale: int = 0  # shards in the folder made with other settings, left out of the merge
    merged: dict[str, int] = dataclasses.field(default_factory=dict)  # records per merged file


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def config_hash(stage: Stage) -> str:
    return _digest({"stage": stage.name, "version": stage.version, "config": stage.settings()})


def fingerprint(stage_hash: str, shard: Shard) -> str:
    return _digest({
        "config": stage_hash,
        "key": shard.key,
        "payload": shard.payload,
        "sources": [identity(path) for path in shard.sources],
    })


def process_share() -> tuple[int, int]:
    """(this process's index, number of processes) of a multi-host JAX run; (0, 1) otherwise.

    A multi-host run has imported and initialised JAX before (`jax.distributed.initialize()`,
    e.g. by a stage CLI's `--distributed`); a run that has not imported JAX is one process,
    and does not pay for importing it.
    """
    if "jax" not in sys.modules:
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def _header(path: Path) -> dict[str, Any] | None:
    """The first line of a shard file, or None when it is not one of ours."""
    try:
        with path.open(encoding="utf-8") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and "fingerprint" in header else None


def _inside(out_dir: Path, relative: str) -> Path | None:
    path = (out_dir / relative).resolve()
    return path if path.is_relative_to(out_dir.resolve()) else None


def _files_intact(out_dir: Path, files: Mapping[str, int]) -> bool:
    for relative, size in files.items():
        path = _inside(out_dir, relative)
        if path is None or not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _run_one(stage: Stage, shard: Shard, out_dir: Path) -> ShardResult:
    try:
        return stage.process(shard, out_dir)
    except Exception as e:  # noqa: BLE001 - one bad item must never stop the run
        log.debug("%s %s failed:\n%s", stage.name, shard.key, traceback.format_exc())
        return ShardResult(failures=[_failure(stage, shard, f"{type(e).__name__}: {e}")])


def _failure(stage: Stage, shard: Shard, error: str) -> Failure:
    return Failure(stage=stage.name, item_id=shard.key, source=shard.sources[0] if shard.sources else "", error=error)


def _worker_main(stage: Stage, out_dir: Path, connection: multiprocessing.connection.Connection) -> None:
    """A worker process: sets the stage up once, then processes one shard at a time until EOF."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        stage.setup()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which stops the run
        connection.send(("setup-failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    connection.send(("ready", None))
    while True:
        try:
            shard = connection.recv()
        except (EOFError, OSError):  # the parent is gone or done
            return
        connection.send(("done", _run_one(stage, shard, out_dir)))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the out-of-memory killer sends it)" if name == "SIGKILL" else ""
        return f"the worker process died from {name}{hint} while processing it"
    return f"the worker process died (exit code {exitcode}) while processing it"


@dataclasses.dataclass(eq=False)
class _Worker:
    process: multiprocessing.Process
    connection: multiprocessing.connection.Connection
    shard: Shard | None = None  # the shard it holds; None while starting or idle

    def receive(self) -> tuple[str, Any] | None:
        """The worker's message, or None when it died without sending one."""
        try:
            return self.connection.recv() if self.connection.poll() else None
        except (EOFError, OSError):
            return None


class _Workers:
    """Worker processes that hold one shard each, so that a dead worker's shard is known."""

    def __init__(self, stage: Stage, out_dir: Path, count: int):
        self._context = multiprocessing.get_context("spawn")  # JAX and decoder threads do not survive fork
        self._stage, self._out_dir = stage, out_dir
        self._starting = [self._start() for _ in range(count)]

    def _start(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(self._stage, self._out_dir, child), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def map(self, shards: Iterable[Shard]) -> Iterator[tuple[Shard, ShardResult]]:
        """Yields (shard, result) as shards finish, in no particular order."""
        queue = collections.deque(shards)
        running = list(self._starting)  # started, not yet ready, or holding a shard
        idle: list[_Worker] = []
        try:
            while queue or any(worker.shard is not None for worker in running):
                while queue and idle:
                    worker = idle.pop()
                    worker.shard = queue.popleft()
                    worker.connection.send(worker.shard)
                    running.append(worker)
                waits = [w.connection for w in running] + [w.process.sentinel for w in running]
                ready = set(multiprocessing.connection.wait(waits))
                for worker in [w for w in running if w.connection in ready or w.process.sentinel in ready]:
                    running.remove(worker)
                    message = worker.receive()
                    if message is None:
                        worker.process.join()
                        death = _death(worker.process.exitcode)
                        if worker.shard is None:
                            raise StageSetupError(f"{self._stage.name}: {death.replace('processing it', 'starting')}")
                        yield worker.shard, ShardResult(failures=[_failure(self._stage, worker.shard, death)])
                        running.append(self._start())
                        continue
                    kind, value = message
                    if kind == "setup-failed":
                        raise StageSetupError(f"{self._stage.name}: a worker could not start: {value}")
                    shard, worker.shard = worker.shard, None
                    idle.append(worker)
                    if kind == "done":
                        yield shard, value
        finally:
            for worker in running + idle:
                worker.connection.close()
                if worker.shard is not None:
                    worker.process.terminate()  # stopped early (an error, Ctrl-C): do not wait for it
            for worker in running + idle:
                worker.process.join(timeout=30)


def _write_shard(path: Path, header: dict[str, Any], result: ShardResult) -> None:
    lines = [header]
    for kind, records in result.records.items():
        lines += [{"kind": kind, "record": record.to_dict()} for record in records]
    lines += [{"kind": Failure.KIND, "record": failure.to_dict()} for failure in result.failures]
    write_jsonl(path, lines)


def _shard_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        next(f)
        for line in f:
            entry = json.loads(line)
            yield entry["kind"], entry["record"]


def run(
    stage: Stage,
    shards: Sequence[Shard],
    out_dir: str | os.PathLike,
    workers: int = 1,
    input_problems: Sequence[Problem] = (),
    share: tuple[int, int] | None = None,
) -> Summary:
    """Processes `shards` (reusing finished ones) and merges the folder's records; see the module doc.

    `input_problems` are items that never became shards (a bad line in an input file, a hostile
    id); they are written to OUT/failures.jsonl ahead of the failed shards.
    """
    out_dir = Path(out_dir)
    work_dir = out_dir / "work" / stage.name
    keys = [check_id(shard.key, "shard key") for shard in shards]
    repeated = sorted(key for key, n in collections.Counter(keys).items() if n > 1)
    if repeated:
        raise ValueError(f"{stage.name}: ids must be unique, these repeat: {', '.join(repeated[:10])}")
    process_index, process_count = share or process_share()
    mine = sorted(shards, key=lambda s: s.key)[process_index::process_count]
    work_dir.mkdir(parents=True, exist_ok=True)
    for folder in (work_dir, out_dir, *(p for p in out_dir.iterdir() if p.is_dir() and p.name != "work")):
        remove_orphans(folder)

    stage_hash = config_hash(stage)
    summary = Summary(shards=len(mine))
    todo: list[tuple[Shard, str, dict[str, int]]] = []  # shard, fingerprint, files of its old version
    for shard in mine:
        fp = fingerprint(stage_hash, shard)
        old = _header(work_dir / f"{shard.key}.jsonl") or {}
        if old.get("fingerprint") == fp and not old.get("failed") and _files_intact(out_dir, old.get("files", {})):
            summary.reused += 1
        else:
            todo.append((shard, fp, old.get("files", {})))
    log.info("%s: %d shards, %d already done, %d to do", stage.name, len(mine), summary.reused, len(todo))

    def save(shard: Shard, result: ShardResult) -> None:
        fp, old_files = by_key[shard.key]
        files = {f: (out_dir / f).stat().st_size for f in result.files}
        header = {"shard": shard.key, "stage": stage.name, "version": stage.version, "config": stage_hash,
                  "fingerprint": fp, "failed": bool(result.failures), "files": files}
        _write_shard(work_dir / f"{shard.key}.jsonl", header, result)
        for relative in set(old_files) - set(files):
            stale = _inside(out_dir, relative)
            if stale is not None:
                stale.unlink(missing_ok=True)
        summary.done += 1
        if header["failed"]:
            summary.failed += 1
            for failure in result.failures:
                log.warning("%s %s failed: %s", stage.name, shard.key, failure.error)

    by_key = {shard.key: (fp, old_files) for shard, fp, old_files in todo}
    with tqdm.tqdm(total=len(todo), desc=stage.name, unit="shard", disable=not todo) as progress:
        if workers > 1 and todo:  # even for one shard: a worker that dies takes only its shard along
            for shard, result in _Workers(stage, out_dir, min(workers, len(todo))).map(s for s, _, _ in todo):
                save(shard, result)
                progress.update()
        elif todo:
            stage.setup()
            for shard, _, _ in todo:
                save(shard, _run_one(stage, shard, out_dir))
                progress.update()

    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"panda_jax.stages.{stage.name}")
    if process_index == 0:
        summary.merged, summary.stale = merge(stage, out_dir, input_problems)
        if summary.stale:
            log.warning("%s: %d shards in %s were made with other settings and are left out of the merged "
                        "records; run again over their inputs to bring them up to date", stage.name, summary.stale, work_dir)
    return summary


def merge(stage: Stage, out_dir: Path, input_problems: Sequence[Problem] = ()) -> tuple[dict[str, int], int]:
    """Writes OUT/<kind>.jsonl and OUT/failures.jsonl from the folder's shards of this config.

    Returns (records written per file, shards left out because another config made them).
    """
    work_dir = out_dir / "work" / stage.name
    stage_hash = config_hash(stage)
    kinds = (*stage.outputs, Failure.KIND)
    counts = dict.fromkeys(kinds, 0)
    stale = 0
    with contextlib.ExitStack() as stack:
        files = {}
        for kind in kinds:
            temporary = stack.enter_context(atomic_output(out_dir / f"{kind}.jsonl"))
            files[kind] = stack.enter_context(temporary.open("w", encoding="utf-8"))

        def emit(kind: str, record: Mapping[str, Any]) -> None:
            files[kind].write(dumps(record) + "\n")
            counts[kind] += 1

        for problem in input_problems:
            emit(Failure.KIND, Failure.of(stage.name, problem).to_dict())
        for path in sorted(work_dir.glob("*.jsonl")):
            header = _header(path)
            if header is None or header.get("config") != stage_hash:
                stale += 1
                continue
            try:
                for kind, record in _shard_records(path):
                    if kind in files:
                        emit(kind, record)
            except (ValueError, KeyError) as e:
                raise RecordError(f"{path}: a damaged shard file ({e}); delete it and run again") from e
    return counts, stale

