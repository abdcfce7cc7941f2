"""``python -m regzoo`` (used by ``torchrun -m regzoo train ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
