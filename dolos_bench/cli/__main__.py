"""``python -m dolos_bench.cli``: the ``bench`` command, for environments without the entry point."""

from . import main

if __name__ == "__main__":
    main()
