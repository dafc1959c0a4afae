import sys

from worldclip.cli import main

sys.exit(main())
