import sys

from anystream_bench.load import main

sys.exit(main())
