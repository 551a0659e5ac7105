"""``python -m evit_deploy.cli``: the same as the ``evit`` script."""
from evit_deploy.cli import main

main()
