"""Recovery after the cut, by name (``--recover``; :data:`hf_prune.registry.RECOVERIES`): a method is one file plus
one line there, a function ``(model, text, options, *, seed, teacher, state_dir, resume) -> RecoveryResult`` that trains
the cut model and leaves a plain model (no adapter modules) behind. :mod:`.lora`: a peft LoRA on the
language-modelling loss, merged; :mod:`.distill`: the student trained on the dense teacher's distributions."""
