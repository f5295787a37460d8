"""The digits family: an 8x8 handwritten digit classifier (task kind ``classification``).

``args`` (the jobs' arguments, no torch), ``train`` (the training script, one ``main``),
``certify_bench`` (certified vs naive thresholds), ``cli`` (its commands)."""
