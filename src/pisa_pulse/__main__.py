"""`python -m pisa_pulse` runs the same CLI as the `pisa-pulse` console script."""

from pisa_pulse.cli import main

raise SystemExit(main())
