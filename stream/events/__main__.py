"""`python -m stream.events subscribe ...`: the subscribe command on its own."""

from stream.events.cli import main

raise SystemExit(main())
