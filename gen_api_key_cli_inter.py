#!/usr/bin/env python3
"""Manage aigateway API keys from an interactive menu."""

from aigateway.cli.venv import use_project_venv

if __name__ == "__main__":
    use_project_venv(__file__)
    from aigateway.cli.menu import main

    main()
