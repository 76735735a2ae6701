"""``python -m stream``: the same as the ``stream`` command."""

from stream.cli import main

raise SystemExit(main())
