"""File formats jaxfuse reads and writes: ActivityNet-format JSON (:mod:`jaxfuse.formats.activitynet`) and safe output files (:mod:`jaxfuse.formats.output`)."""
