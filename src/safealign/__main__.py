"""`python -m safealign`: same as the `safealign` console script."""

from __future__ import annotations

from safealign.cli import main

if __name__ == "__main__":
    main()
