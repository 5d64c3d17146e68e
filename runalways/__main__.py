"""``python -m runalways``: the command line (never guards itself)."""

from runalways.cli import main

raise SystemExit(main())
