"""`make demo`: the whole loop on the grounded synthetic corpus, where the truth is known.

No pretrained captioner can be had offline, so the demo proves teachers + selection + student
in a world whose every event has a caption and structured facts (`panda_jax.data.synthetic`),
with a fact scorer as its "human judge" (`panda_jax.evaluate.facts`).

`python -m panda_jax.demo --out DIR [--quick] [--seed S]` runs, each through the command or
function a user calls (the demo holds no stage logic of its own):

  corpus     validation and test videos of one seed (`synthetic.generate_corpus`); the trainings
             read the seed's endless stream of fresh videos instead (`SyntheticStream`);
  split      the test videos with each detector, with and without stitching, scored against
             the ground truth (the paper's Table 2; the unstitched clips are the stitched run's
             shots, `split.shot_clips`, one detection pass per detector); validation and test as
             the pipeline goes on;
  foundations  the vision encoder and language model every teacher is built around
             (`python -m panda_jax.foundations`), from the cache when it holds them;
  teachers   four captioners around the frozen foundations, their Q-Formers trained on the stream,
             each seeing what its paper counterpart sees (`python -m panda_jax.train
             --config=captioner:...`, then `python -m panda_jax.export`);
  caption    every validation and test clip with every teacher (`python -m panda_jax.caption`);
  judge      the fact scorer labels each clip with its best caption, and scores every teacher
             (`python -m panda_jax.evaluate --task facts`);
  selectors  pretrained on the train videos' clip / caption pairs, then fine-tuned on the
             labelled validation clips with hard negatives or plainly; each selects on the
             test clips (`python -m panda_jax.select`), scored against the judge;
  dataset    the `panda70m` TFDS dataset of the validation clips and their selected captions;
  students   trained on it, video only and video + text (`--config=student`), and captioning
             the test clips as a teacher would;
  table 4    fact F1, BLEU-4, METEOR, ROUGE-L, CIDEr and clips/s of every captioner.

It writes DIR/results.json, with each claim's verdict and each teacher's target
(`panda_jax.demo.claims`), and DIR/README.md (`panda_jax.demo.report`). Each stage records its
inputs and wall time in DIR/stages/; a second run reuses the stages whose inputs did not change:
the resolved config of each command it runs, the package version, and the runs of the stages
whose outputs it reads (`panda_jax.demo.stages`).
"""
