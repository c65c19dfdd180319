"""One command-line mechanism for every panda-jax command: absl flags over an ml_collections config.

    python -m panda_jax.split talk.mp4 --out runs/split --config=split:panda70m --config.cut=copy

`--config=NAME[:VARIANT]` names a file of the installed `panda_jax.configs` (the repository's
`configs/` folder); `--config=PATH[:VARIANT]` any config file. VARIANT goes to the file's
`get_config(arg)` (big_vision style), and `--config.key=value` overrides any field
(ml_collections' config_flags). A command's everyday flags (`--out`, `--workers`, `--detector`,
...) are shorthands that set config fields, so everything that decides a stage's output is in
the config its shards are fingerprinted with.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import pkgutil
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags

CONFIG_PACKAGE = "panda_jax.configs"


def available_configs() -> list[str]:
    """Names `--config=NAME` accepts."""
    package = importlib.import_module(CONFIG_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def config_file(spec: str) -> str:
    """`NAME[:VARIANT]` or `PATH[:VARIANT]` as the `PATH[:VARIANT]` that config_flags loads."""
    name, colon, variant = spec.partition(":")
    if name.endswith(".py") or "/" in name:
        if not Path(name).is_file():
            raise ValueError(f"config file {name} not found")
        return spec
    found = importlib.util.find_spec(f"{CONFIG_PACKAGE}.{name}") if name.isidentifier() else None
    if found is None or found.origin is None:
        raise ValueError(
            f"no config named {name!r}; the installed ones are {', '.join(available_configs())}, "
            "or give the path of a config file"
        )
    return found.origin + colon + variant


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config `--config=spec` gives, before overrides: for library code (the TFDS builder, tests)."""
    path, colon, variant = config_file(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"panda_jax_config_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*([variant] if colon else []))


class _ConfigSpecParser(flags.ArgumentParser):
    """config_flags' file parser, taking the names of installed configs as well as paths."""

    def __init__(self, file_parser: flags.ArgumentParser):
        self.file_parser = file_parser

    def parse(self, spec: str) -> Any:
        return self.file_parser.parse(config_file(spec))

    def flag_type(self) -> str:
        return self.file_parser.flag_type()


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """Sets the dotted field `path` (`stitch.enabled`) of `config`."""
    *parents, field = path.split(".")
    for parent in parents:
        config = config[parent]
    config[field] = value


def fail(program: str, message: str) -> NoReturn:
    """Exits with status 2, saying what was wrong with the command line."""
    sys.stderr.write(f"{program}: error: {message}\nTry --help.\n")
    raise SystemExit(2)


@dataclass(frozen=True)
class Command:
    """What a command line asked for: the config (shorthands applied), positional arguments, flags."""

    program: str
    config: ml_collections.ConfigDict
    args: list[str]
    flags: flags.FlagValues

    def fail(self, message: str) -> NoReturn:
        fail(self.program, message)


def parse(
    argv: Sequence[str] | None,
    *,
    program: str,
    doc: str,
    default_config: str | None,
    define: Callable[[flags.FlagValues], None] = lambda flag_values: None,
    shorthands: Mapping[str, str] = {},
) -> Command:
    """Parses a command line: `argv` holds the arguments after the program name (`sys.argv[1:]` when None).

    `define` adds the command's own flags; `shorthands` maps a flag name to the config field it
    sets when given. A command without a config (`default_config` None) gets no --config flag. `--help` prints `doc`, the flags and the config's fields, and exits;
    a bad flag exits with status 2 and says what was wrong.
    """
    argv = [program, *(sys.argv[1:] if argv is None else argv)]
    flag_values = flags.FlagValues()
    if default_config is not None:
        config_flags.DEFINE_config_file(
            "config", None, "NAME[:VARIANT] of an installed config, or PATH[:VARIANT] of a config file; "
            f"override fields with --config.FIELD=VALUE (default {default_config})",
            flag_values=flag_values, sys_argv=argv,
        )  # fmt: skip
        flag_values["config"].parser = _ConfigSpecParser(flag_values["config"].parser)
    flags.DEFINE_bool("verbose", False, "log every step, with tracebacks of failures", short_name="v", flag_values=flag_values)
    flags.DEFINE_bool("help", False, "show this help and exit", short_name="h", flag_values=flag_values)
    define(flag_values)
    try:
        if default_config is not None:
            flag_values.set_default("config", default_config)
        args = flag_values(argv)
        config = flag_values["config"].value if default_config is not None else ml_collections.ConfigDict()
        for flag_name, field in shorthands.items():
            if flag_values[flag_name].present:
                set_field(config, field, flag_values[flag_name].value)
    except (AttributeError, KeyError) as error:  # an override of a field the config does not have
        field = str(error).strip("'\"")
        fail(program, f"the config has no field {field!r}; --help lists its fields")
    except (flags.Error, ValueError, OSError) as error:
        # config_flags puts a config file's traceback in its message: its last line says what went wrong.
        fail(program, str(error).strip().splitlines()[-1])
    if flag_values["help"].value:
        print(usage(doc, flag_values, config))
        raise SystemExit(0)
    logging.basicConfig(
        level=logging.DEBUG if flag_values["verbose"].value else logging.INFO, format="%(levelname)s %(message)s"
    )
    logging.getLogger("jax").setLevel(logging.WARNING)
    use_compilation_cache()
    return Command(program=program, config=config, args=args[1:], flags=flag_values)


def cache_dir() -> Path:
    """Where the commands keep what they make once and reuse: `$PANDA_JAX_CACHE`, default ~/.cache/panda_jax."""
    return Path(os.environ.get("PANDA_JAX_CACHE", Path.home() / ".cache" / "panda_jax")).expanduser()


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache, so a second run skips compiling (tens of seconds on a CPU) what the first
    compiled; `JAX_COMPILATION_CACHE_DIR` chooses another folder."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))


def usage(doc: str, flag_values: flags.FlagValues, config: ml_collections.ConfigDict) -> str:
    """`--help`: the command's docstring, its flags, and every config field with its value."""
    by_name = {flag_values[key].name: flag_values[key] for key in flag_values}  # keys hold short names too
    lines = [doc.strip(), "", "flags:"]
    for flag in (f for name, f in sorted(by_name.items()) if "." not in name):  # not the --config.FIELD ones
        short = f"-{flag.short_name}, " if flag.short_name else ""
        name = f"[no]{flag.name}" if flag.boolean else flag.name
        default = "" if flag.default is None or flag.name in ("config", "help") else f" (default {flag.default})"
        lines.append(f"  {short}--{name}: {flag.help}{default}")
    if config:
        lines += ["", "config fields (set any with --config.FIELD=VALUE):", textwrap.indent(config.to_json_best_effort(indent=2), "  ")]
    return "\n".join(lines)


def define_distributed(flag_values: flags.FlagValues) -> None:
    """The flags of one process of a multi-host run (`start_distributed` acts on them)."""
    flags.DEFINE_bool("distributed", False, "one process of a multi-host run: joins it (jax.distributed.initialize) and "
                      "processes this process's share of the shards; process 0 writes the merged records",
                      flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("coordinator_address", None, "with --distributed: host:port of process 0 (default: found "
                        "by JAX on TPU pods, SLURM, Kubernetes and the like)", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_integer("num_processes", None, "with --distributed: how many processes (default: found by JAX)",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "with --distributed: this process's index (default: found by JAX)",
                         lower_bound=0, flag_values=flag_values)


def start_distributed(flag_values: flags.FlagValues) -> None:
    """Joins the multi-host run when --distributed was given."""
    if flag_values["distributed"].value:
        import jax

        jax.distributed.initialize(
            coordinator_address=flag_values["coordinator_address"].value,
            num_processes=flag_values["num_processes"].value,
            process_id=flag_values["process_id"].value,
        )

