"""``python -m nodulekit`` is the ``nodulekit`` command line."""

from .cli import main

raise SystemExit(main())
