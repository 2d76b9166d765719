"""Running hf-prune: the command line (:mod:`.cli`, :mod:`.flags`), the pipeline of a pruning run
(:mod:`.pipeline` ordering the stages of :mod:`.stages`), ``hf-prune eval`` (:mod:`.scoring`), prune-on-load
(:mod:`.auto`) and what the command prints (:mod:`.console`)."""
