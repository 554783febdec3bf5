"""The embedded ICL benchmark, in pieces: world (items, embeddings), oracle (the
reader), generate (beam search and RL candidates), files (Lever-Plus formats and
the on-disk cache). ``trainer.simulator`` is the entry point others import."""
