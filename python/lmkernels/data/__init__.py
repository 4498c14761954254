"""Reference corpora and small trained models (`python -m lmkernels.data --help`).

Nothing here is downloaded: text comes from Debian packages installed with apt-get, models
are trained on it by `train-reference` on the CPU.
"""

from .corpora import MissingPackageError, build_corpora, train_tokenizer

__all__ = ["MissingPackageError", "build_corpora", "train_tokenizer"]
