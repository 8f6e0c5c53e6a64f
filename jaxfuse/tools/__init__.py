"""Tools beside the kernels: the ``jaxfuse study`` and ``jaxfuse demo`` commands and seeded synthetic data.

* :mod:`~jaxfuse.tools.synthetic`: THUMOS-like padded groups and the numpy
  reference formulas (the demo's and the benchmarks' baseline);
* :mod:`~jaxfuse.tools.videos`: synthetic videos with ground truth
  (:func:`jaxfuse.synthetic_videos` is exported from the package);
* :mod:`~jaxfuse.tools.demo`, :mod:`~jaxfuse.tools.study`: the commands.

Nothing here is imported at ``import jaxfuse`` except :mod:`~jaxfuse.tools.videos`.
"""
