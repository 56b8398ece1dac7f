"""``python -m loraplus_lab.sims.cli``: the ``loraplus-lab`` command."""

from loraplus_lab.sims.cli import main

raise SystemExit(main())
