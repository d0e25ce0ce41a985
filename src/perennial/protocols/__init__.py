"""Evaluation protocols of the instant learner, each through :class:`~perennial.LifelongClassifier`.

- :mod:`perennial.protocols.incremental`: classes arrive in steps, each learned in one pass;
  accuracy on every class seen so far, against joint training and SGD fine-tuning.
- :mod:`perennial.protocols.openset`: the same stream with the open-set gate on; in-scope
  accuracy, out-of-scope recall and AUROC against held-out out-of-scope queries.
"""
