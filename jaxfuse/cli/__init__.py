"""The ``jaxfuse`` console subcommands, one module each (``configure(parser)`` and ``run(args)``); the dispatcher is :mod:`jaxfuse.cli.main`."""
