"""`python -m bench` entry point."""

from bench.run import main

raise SystemExit(main())
