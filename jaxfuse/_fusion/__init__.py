"""Fusion of groups: the template closed forms, the Student-t solver, the generic fitter, padded and ragged entry points. Imports only the core."""
