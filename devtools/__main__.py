from devtools.cli import main
from farm.settings import run_command

run_command(main)
