"""``python -m edge_client ...`` runs the edge client command line."""

import sys

from edge_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
