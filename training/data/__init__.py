"""Datasets for the mail-sorting models: the one digits split, the envelope generator, the loader."""
