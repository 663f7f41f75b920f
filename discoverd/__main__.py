"""`python -m discoverd` entry point."""

from discoverd.cli import main

raise SystemExit(main())
