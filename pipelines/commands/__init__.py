"""The ``nsm`` subcommands, one module per job. Each provides ``add_parser(subparsers)``, which registers the
subcommand with its own ``--help`` and sets ``func``: a callable taking the parsed arguments and returning an exit
status. They parse and print; the work is done by the library modules of ``pipelines``."""
