"""File formats jaxfuse reads and writes.

ActivityNet-format JSON (:mod:`jaxfuse.formats.activitynet`, its parse errors worded by
:mod:`jaxfuse.formats.json_diagnosis`) and safe output files (:mod:`jaxfuse.formats.output`, over
:mod:`jaxfuse.formats.output_paths` and :mod:`jaxfuse.formats.temporary_files`).
"""
