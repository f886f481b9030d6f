from farm.settings import run_command
from worker.cli import main

run_command(main)
