#!/usr/bin/env python
"""Same as `ms-gpt2 attention-demo`: print each attention step's shape and the library diff."""
import sys

from ms_gpt2.cli import main

sys.exit(main(["attention-demo", *sys.argv[1:]]))
