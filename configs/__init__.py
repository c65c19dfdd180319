"""Configs of every command, installed as `panda_jax.configs`: `--config=NAME[:VARIANT]` picks one.

Each file has a big_vision-style `get_config(arg)` returning an ml_collections ConfigDict;
panda_jax.cli resolves names, variants and `--config.key=value` overrides.
"""
