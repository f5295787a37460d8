"""The zip-reader family: envelope image -> 5-digit ZIP code (task kind ``sequence``).

``args`` (the job's arguments, no torch), ``train`` (the training script, one ``main``), ``cli``
(its command)."""
