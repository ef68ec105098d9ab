"""`python -m textgen ...`: the command line in textgen/cli.py."""
from .cli import main
raise SystemExit(main())
