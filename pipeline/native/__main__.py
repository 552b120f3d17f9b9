import sys

from pipeline.native import main

sys.exit(main())
