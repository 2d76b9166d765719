"""Recovery after the cut, by name (``--recover``; :data:`hf_prune.registry.RECOVERIES`): a method is one file plus
one line there, a function ``(model, train_ids, eval_ids, options, *, seed) -> RecoveryResult`` that trains the
cut model and leaves a plain model (no adapter modules) behind. :mod:`.lora`: a peft LoRA, merged."""
