"""The captioner family: a scene of coloured shapes -> its canonical caption (task kind ``caption``).

``data`` (generated scenes, the caption grammar and vocabulary), ``model`` (the CNN + transformer
captioner and its served graph with greedy decoding inside), ``args`` (the job's arguments, no
torch), ``train`` (the training script, one ``main``), ``cli`` (its command)."""
