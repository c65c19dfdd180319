"""`python -m panda_jax.data.synthetic`: the corpus command line (see `corpus.main`)."""

from panda_jax.data.synthetic.corpus import main

main()
