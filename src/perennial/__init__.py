"""perennial: models that never stop learning.

A frozen pretrained encoder feeds a head that learns in one pass from fixed-size statistics:
new classes in milliseconds, nothing forgotten, no training data kept.
"""

from perennial.heads import NCMHead, RidgeHead, SLDAHead
from perennial.learner import LifelongClassifier

__all__ = ["LifelongClassifier", "NCMHead", "RidgeHead", "SLDAHead", "__version__"]

__version__ = "0.1.0"
