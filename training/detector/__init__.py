"""The detector family: digits on a parcel label -> scored boxes (task kind ``detection``).

``data`` (generated labels and their COCO annotations), ``model`` (the CenterNet and its served
graph), ``args`` (the job's arguments, no torch), ``train`` (the training script, one ``main``),
``cli`` (its command)."""
