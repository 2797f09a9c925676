"""The long bench run behind benchmarks/RESULTS.md.

Runs ``python -m tlsresume.bench`` with more rounds and longer
measurements than the default, and writes next to this file:
``results.json`` (every row), ``results.md`` (the tables) and
``results.png`` (the chart; needs matplotlib).  Extra arguments go to
the bench, e.g. ``--rounds 3`` or ``--clients tlsresume,c-reference``.

Usage: python benchmarks/run_full.py [BENCH OPTIONS]

It runs the tlsresume installed for this Python (``pip install
'.[bench,plot]'`` from the source tree first); ``--help`` lists the
bench's options.

The three files are the published figures, and a run replaces them: for
a trial, pass ``--json``, ``--markdown`` and ``--plot`` with other
paths (they come after this script's own and win).

Let the machine be otherwise idle: the clients and the server share its
cores, and anything else running shows up in the figures.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROUNDS = "7"
DURATION = "1.5"


def main(argv):
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        print("\nThe bench's options:\n")
        return subprocess.call([sys.executable, "-m", "tlsresume.bench",
                                "--help"])
    cmd = [sys.executable, "-m", "tlsresume.bench",
           "--rounds", ROUNDS, "--duration", DURATION,
           "--json", os.path.join(HERE, "results.json"),
           "--markdown", os.path.join(HERE, "results.md")]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is missing: no results.png (pip install "
              "'.[plot]' in the source tree)", file=sys.stderr)
    else:
        cmd += ["--plot", os.path.join(HERE, "results.png")]
    # Later options win: the caller may override rounds and duration.
    cmd += argv
    print("running:", " ".join(cmd[1:]), file=sys.stderr)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
