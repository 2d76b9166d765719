"""The cut: zero groups without changing shapes (:mod:`.masks`), refit their consumers (:mod:`.compensation`),
slice the weights (:mod:`.surgery`), relabel the model as its pruned class (:mod:`.relabel`), all of it in the
order a plan asks (:mod:`.apply`)."""
