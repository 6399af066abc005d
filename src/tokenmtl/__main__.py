"""`python -m tokenmtl ...` (what torchrun launches) runs the CLI."""

from tokenmtl.cli import main

main()
