"""Where the work runs: the process group of a distributed run, accelerate's offloaded weights, the model's
train/eval mode, and Ctrl-C at a step boundary. Nothing here knows a model family or a pruning method."""
