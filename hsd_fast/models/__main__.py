import sys

from ..cli import main

sys.exit(main(["models", *sys.argv[1:]]))
