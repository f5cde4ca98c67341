"""``python -m prefect_comfy.cli``: the same as the ``prefect-comfy`` console script."""

from prefect_comfy.cli import main

main()
