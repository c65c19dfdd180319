"""The demo `make demo` runs: real test clips plus a small grounded synthetic corpus."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.out_dir = "out/demo"
    # The real clips of panda_jax.data.testmedia; the demo goes on without them when offline.
    config.test_clips = ("bikes", "bigbuckbunny", "city")
    config.corpus = ml_collections.ConfigDict()
    config.corpus.num_videos = 8
    config.corpus.seed = 0
    config.corpus.size = 128
    config.corpus.fps = 24
    config.corpus.duration = 20.0
    config.corpus.workers = 2
    return config
