"""`python -m textgen ...`: the command line in textgen/transports/cli.py."""
from .transports.cli import main
raise SystemExit(main())
