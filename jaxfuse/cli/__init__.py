"""The ``jaxfuse`` console commands, one module each (``configure(parser)``, ``run(args)``)."""
