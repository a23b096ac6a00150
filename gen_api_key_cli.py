#!/usr/bin/env python3
"""Manage aigateway API keys with flags: see --help."""

from aigateway.cli.venv import use_project_venv

if __name__ == "__main__":
    use_project_venv(__file__)
    from aigateway.cli.flags import main

    main()
