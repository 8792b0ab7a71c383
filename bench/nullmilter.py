"""The floor for our design: a pymilter milter that does nothing but answer, on the same libmilter stack.

Usage: python -m bench.nullmilter SOCKET   (libmilter syntax: unix:/path or inet:PORT@HOST)
"""

from __future__ import annotations

import sys

import Milter


class NullMilter(Milter.Base):
    def eom(self):
        return Milter.ACCEPT


def main() -> int:
    Milter.factory = NullMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("nullmilter", sys.argv[1], 240)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
