"""`revelio` command line: one sub-command per stage of the flow, all taking --config and --set."""
from .main import COMMANDS, build_parser, dispatch, main

__all__ = ["COMMANDS", "build_parser", "dispatch", "main"]
