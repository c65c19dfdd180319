"""What `make demo` runs (`python -m panda_jax.demo`): real test clips plus a small grounded synthetic corpus."""

import ml_collections

from panda_jax.configs import corpus


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.out = "out/demo"
    # The real clips of panda_jax.data.testmedia; the demo goes on without them when offline.
    config.test_clips = ("bikes", "bigbuckbunny", "city")
    config.corpus = corpus.get_config("small")
    return config
