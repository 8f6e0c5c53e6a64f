"""jaxfuse's version, in a leaf module so that the runtime can key caches on it without importing the package."""

VERSION = "0.1.0"
