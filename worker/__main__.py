from farm.settings import run_command


def main() -> int:
    from worker.cli import main  # imported here: a setting its modules read on import is reported

    return main()


run_command(main)
