"""`python -m vggfeat` runs the command line."""

from vggfeat.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="vggfeat")
