import sys

from ms_gpt2.cli import main

sys.exit(main())
