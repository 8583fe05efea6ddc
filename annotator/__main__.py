"""`python -m annotator --store prefs.sqlite` (same flags as `photographer annotate`)."""

from annotator.app import main

raise SystemExit(main())
