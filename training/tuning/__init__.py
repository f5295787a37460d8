"""Hyperparameter search for the model families (``auditstream tune FAMILY``): Optuna's TPE
sampler, trials pruned on a validation metric carved from the training data, the best
parameters and the study's summary on the card of the model trained with them."""
