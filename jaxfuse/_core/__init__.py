"""The leaf core: result codes, argument checks, array interop, settings and published constants, padding policies and shared array helpers. Imports nothing else from jaxfuse."""
