"""`python -m edge_downscale.cli` (and `accelerate launch -m edge_downscale.cli`)."""
from . import main

main()
