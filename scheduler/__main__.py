from farm.settings import run_command
from scheduler.cli import main

run_command(main)
