"""Drop-in replacements for the post-processing of other TAL codebases, on jaxfuse kernels.

* :mod:`jaxfuse.compat.actionformer`: ActionFormer's (and OpenTAD's)
  ``batched_nms``, and a whole-dataset variant with GauFuse fusion as a third method.
"""

from jaxfuse.compat import actionformer

__all__ = ["actionformer"]
